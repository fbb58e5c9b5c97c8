"""Errors of the REST endpoints in OpenAI's shape, and the guard that turns every failure into one.

The body is always ``{"error": {"message", "type", "param", "code"}}``. A client fault
(:class:`~parley.errors.ClientError`, a request that fails validation, an :class:`ApiError`) is
an ``invalid_request_error`` with status 400 (404 or 413 where HTTP says so); an engine fault
is a ``server_error``, 500, or 503 when the engine is unavailable. Anything unexpected is logged
with its traceback and answered with a bare 500, never with the traceback. Once a stream has
begun its status is sent, so an error inside it is an ``error`` server-sent event instead.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from parley.errors import ClientError, EngineUnavailableError, ParleyError

__all__ = [
    "ApiError",
    "error_body",
    "error_response",
    "exception_response",
    "guarded",
    "sse",
    "sse_error",
    "validation_error",
]

log = logging.getLogger("parley.server.rest")

Endpoint = Callable[[Request], Awaitable[Response]]


class ApiError(Exception):
    """An HTTP-level refusal that no :class:`~parley.errors.ParleyError` describes (404, 413)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type


def error_body(
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(message, type=type, param=param, code=code), status_code=status)


def exception_response(exc: ParleyError | ApiError) -> JSONResponse:
    if isinstance(exc, ApiError):
        return error_response(
            exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code
        )
    if isinstance(exc, ClientError):
        return error_response(400, exc.message, param=exc.param, code=_code(exc))
    status = 503 if isinstance(exc, EngineUnavailableError) else 500
    return error_response(
        status, exc.message, type="server_error", param=exc.param, code=_code(exc)
    )


def _code(exc: ParleyError) -> str:
    # A plain ClientError's code repeats its type; OpenAI says what was wrong with the value.
    return "invalid_value" if exc.code == "invalid_request_error" else exc.code


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_error(exc: ParleyError) -> bytes:
    """An error inside a stream that has begun (its status is sent): an ``error`` event, which
    the SDK raises as an ``APIError``."""
    kind = "invalid_request_error" if isinstance(exc, ClientError) else "server_error"
    body = error_body(exc.message, type=kind, param=exc.param, code=_code(exc))
    return sse({"type": "error", **body})


def _param(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def validation_error(exc: ValidationError) -> ApiError:
    """The first problem of a request that failed validation, as OpenAI words it."""
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return ApiError(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you"
            " aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
        )
    param = _param(tuple(first["loc"]))
    if kind == "missing":
        return ApiError(400, f"Missing required parameter: '{param}'.", param=param)
    if not param:
        return ApiError(400, f"Invalid request body: {first['msg']}.", code="invalid_type")
    code = "invalid_type" if kind.endswith("_type") or kind.endswith("_parsing") else None
    return ApiError(
        400,
        f"Invalid value for '{param}': {first['msg']}.",
        param=param,
        code=code or "invalid_value",
    )


def guarded(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, answering every exception it raises with an OpenAI error response."""

    @functools.wraps(endpoint)
    async def handle(request: Request) -> Response:
        try:
            return await endpoint(request)
        except (ParleyError, ApiError) as exc:
            return exception_response(exc)
        except ValidationError as exc:
            return exception_response(validation_error(exc))
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                500, "The server had an error while processing your request.", type="server_error"
            )

    return handle
