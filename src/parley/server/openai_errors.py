"""REST errors in OpenAI's shape, and the guard that turns every failure into one.

The body is ``{"error": error_body(exc)}`` (:func:`parley.errors.error_body`, the same object the
Realtime ``error`` event carries) and the status is the error class's own
(:class:`~parley.errors.ParleyError` ``.status``): a client fault is 4xx and typed
``invalid_request_error``, an engine fault 5xx and typed ``server_error``. Anything unexpected
is logged with its traceback and answered with a bare 500, never with the traceback. Once a
stream has begun its status is sent, so an error inside it is an ``error`` server-sent event.
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

from parley.errors import (
    ClientError,
    Code,
    EngineError,
    ParleyError,
    ProtocolError,
    RateLimitError,
    dotted_param,
    error_body,
)

__all__ = [
    "error_response",
    "guarded",
    "sse",
    "sse_error",
    "validation_error",
]

log = logging.getLogger("parley.server.rest")

Endpoint = Callable[[Request], Awaitable[Response]]


def error_response(
    exc: ParleyError, *, status: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """``exc`` as an HTTP response (``status`` where HTTP needs another than the error's own,
    as 405); a 429 or 503 says when to try again."""
    status = exc.status if status is None else status
    if headers is None and status in (429, 503):
        headers = {"retry-after": "1"}
    return JSONResponse({"error": error_body(exc)}, status_code=status, headers=headers)


def sse(data: dict[str, Any]) -> bytes:
    """One server-sent event carrying ``data`` as JSON."""
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def sse_error(exc: ParleyError) -> bytes:
    """An error inside a stream that has begun (its status is sent): an ``error`` event, which
    the SDK raises as an ``APIError``."""
    return sse({"type": "error", "error": error_body(exc)})


def validation_error(exc: ValidationError, *, prefix: str = "") -> ClientError:
    """The first problem of a request that failed validation, as OpenAI words it."""
    first = exc.errors(include_url=False)[0]
    kind = first["type"]
    if kind == "json_invalid":
        return ProtocolError(
            "We could not parse the JSON body of your request. (HINT: This likely means you"
            " aren't using your HTTP library correctly. The OpenAI API expects a JSON payload.)",
            code=Code.INVALID_JSON,
        )
    param = dotted_param(tuple(first["loc"]))
    if prefix:
        param = f"{prefix}.{param}" if param else prefix
    if kind == "missing":
        return ProtocolError(
            f"Missing required parameter: '{param}'.",
            param=param,
            code=Code.MISSING_REQUIRED_PARAMETER,
        )
    if not param:
        return ProtocolError(f"Invalid request body: {first['msg']}.", code=Code.INVALID_TYPE)
    code = (
        Code.INVALID_TYPE
        if kind.endswith("_type") or kind.endswith("_parsing")
        else Code.INVALID_VALUE
    )
    return ProtocolError(f"Invalid value for '{param}': {first['msg']}.", param=param, code=code)


def guarded(endpoint: Endpoint) -> Endpoint:
    """``endpoint``, answering every exception it raises with an OpenAI error response."""

    @functools.wraps(endpoint)
    async def handle(request: Request) -> Response:
        try:
            return await endpoint(request)
        except ParleyError as exc:
            if not isinstance(exc, ClientError | RateLimitError):
                log.warning("%s %s failed: %s", request.method, request.url.path, exc.message)
            return error_response(exc)
        except ValidationError as exc:
            return error_response(validation_error(exc))
        except Exception:
            log.exception("%s %s failed", request.method, request.url.path)
            return error_response(
                EngineError("The server had an error while processing your request.")
            )

    return handle
