"""``GET /v1/organization/costs``: OpenAI's Costs API over parley's ledger.

Query parameters as OpenAI takes them: ``start_time`` (required, unix seconds), ``end_time``,
``bucket_width`` (``1d``), ``group_by`` (repeated, or ``group_by[]``: ``project_id``, the
tenant's name, and ``line_item``, ``<stage>:<engine>``), ``project_ids`` (likewise), ``limit``
(buckets per page) and ``page`` (the previous page's ``next_page``). The page itself is built
by :meth:`parley.ledger.Ledger.costs_page`.

**Scope.** A tenant's key sees only its own tenant: its ``project_ids`` are narrowed to it, so
asking for another tenant's yields empty buckets, never its figures. The operator's admin token
(``server.admin_token``, recognised by the auth middleware) sees every tenant. This module only
parses, scopes and answers; it must not compute costs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from parley.errors import ClientError, Code, NotFoundError, ParleyError
from parley.ledger import Ledger
from parley.server.auth import principal_of
from parley.server.openai_errors import error_response

__all__ = ["COSTS_PATH", "costs_route"]

COSTS_PATH = "/v1/organization/costs"


def _int(request: Request, name: str, *, required: bool = False) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        if required:
            raise ClientError(
                f"Missing required parameter: '{name}'.",
                param=name,
                code=Code.MISSING_REQUIRED_PARAMETER,
            )
        return None
    try:
        return int(raw)
    except ValueError:
        raise ClientError(
            f"Invalid value for '{name}': expected an integer, got {raw!r}.", param=name
        ) from None


def _list(request: Request, name: str) -> list[str]:
    values = [*request.query_params.getlist(name), *request.query_params.getlist(f"{name}[]")]
    # A comma-separated value is accepted too (some clients join arrays that way).
    return [part for value in values for part in value.split(",") if part]


def costs_route(ledger_of: Callable[[], Ledger | None]) -> Route:
    """The route; ``ledger_of`` gives the app's ledger (None: the app keeps none, 404). Who
    is an admin is the auth middleware's decision (``AuthMiddleware(admin_token=...)``)."""

    async def costs(request: Request) -> Response:
        try:
            ledger = ledger_of()
            if ledger is None:
                raise NotFoundError(
                    "This server keeps no ledger: costs need its database (server.database)."
                )
            principal = principal_of(request.scope)
            start_time = _int(request, "start_time", required=True)
            assert start_time is not None
            project_ids: list[str] | None = _list(request, "project_ids") or None
            if not principal.admin:
                own = principal.tenant
                project_ids = [own] if project_ids is None or own in project_ids else []
            limit = _int(request, "limit")
            page = await asyncio.to_thread(
                ledger.costs_page,
                start_time=start_time,
                end_time=_int(request, "end_time"),
                bucket_width=request.query_params.get("bucket_width", "1d"),
                group_by=_list(request, "group_by"),
                project_ids=project_ids,
                limit=7 if limit is None else limit,
                page=request.query_params.get("page") or None,
            )
        except ParleyError as exc:
            return error_response(exc)
        return JSONResponse(page)

    return Route(COSTS_PATH, costs, methods=["GET"])
