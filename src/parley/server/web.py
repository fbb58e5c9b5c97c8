"""The web page at ``/``: talk to parley from a browser over WebRTC (issue 15).

Plain static files from the package (``parley/web``), served as they are: no build step, nothing
from a CDN. The page asks ``GET /v1/parley/web/config`` what this server offers, and, where the
operator enabled it (``parley serve --web-demo-tenant NAME``), gets an ephemeral key from
``POST /v1/parley/web/client_secrets`` for a client whose address ``web.demo_allow`` admits
(this machine only by default). Without that, a person pastes a key, which the page keeps in
memory for the call only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from parley.errors import ClientError, Code, ParleyError, PermissionDeniedError
from parley.server.auth import WEB_CONFIG_PATH, WEB_DEMO_SECRETS_PATH, Principal
from parley.server.http_streams import limited
from parley.server.openai_errors import error_response
from parley.server.sessions import check_config
from parley.server.state import AppState
from parley.store.keys import ApiKey

__all__ = ["web_routes"]

log = logging.getLogger("parley.server")

PAGE_DIR = Path(__file__).resolve().parents[1] / "web"
DEMO_KEY_NAME = "web-demo"
DEMO_SECRET_TTL_S = 600


def web_routes(state: AppState) -> list[BaseRoute]:
    if not state.settings.web.page:
        return []

    async def page(request: Request) -> Response:
        return FileResponse(PAGE_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    async def config(request: Request) -> JSONResponse:
        return JSONResponse(_config(state, request))

    async def demo_secret(request: Request) -> Response:
        try:
            return JSONResponse(await _demo_secret(state, request))
        except ParleyError as exc:
            return error_response(exc)

    return [
        Route("/", page),
        Mount("/web", StaticFiles(directory=PAGE_DIR), name="web"),
        Route(WEB_CONFIG_PATH, config),
        Route(WEB_DEMO_SECRETS_PATH, demo_secret, methods=["POST"]),
    ]


def _config(state: AppState, request: Request) -> dict[str, Any]:
    settings = state.settings
    voices = [
        {"id": v.id, "name": v.name, "language": v.language} for v in state.engines.tts.voices()
    ]
    # A session's voice unless it asks for one (OpenAI's names map onto every engine's voices).
    default = settings.tts.voice or "alloy"
    if not any(default.lower() in (v["id"].lower(), v["name"].lower()) for v in voices):
        voices.insert(0, {"id": default, "name": f"Default ({default})", "language": ""})
    control = state.control
    return {
        "auth": state.keys is not None,
        "demo_key": state.keys is not None and _demo_allowed(state, request),
        "metering": control is not None and control.ledger is not None and bool(control.prices),
        "voices": voices,
        "default_voice": default,
        "instructions": settings.pipeline.instructions,
        "turn_detection": settings.turn_detection.type,
    }


def _demo_allowed(state: AppState, request: Request) -> bool:
    web = state.settings.web
    if not web.demo_tenant or request.client is None:
        return False
    try:
        address = ipaddress.ip_address(request.client.host)
    except ValueError:
        return False
    return any(address in ipaddress.ip_network(net, strict=False) for net in web.demo_allow)


async def _demo_secret(state: AppState, request: Request) -> dict[str, Any]:
    """An ephemeral key of the demo tenant, for a client the operator admits."""
    keys = state.keys
    if keys is None:
        raise ClientError(
            "This server runs without keys (--no-auth): the page needs none.",
            code=Code.AUTH_DISABLED,
        )
    if not _demo_allowed(state, request):
        raise PermissionDeniedError(
            "This server gives the web page no key: paste a key, or start the server with "
            "--web-demo-tenant NAME (and web.demo_allow for clients beyond this machine)."
        )
    try:
        body = json.loads(await limited(request, 64 * 1024).body() or b"{}")
    except ValueError:
        raise ClientError("The body is not valid JSON.", code=Code.INVALID_JSON) from None
    config = body.get("session") if isinstance(body, dict) else None
    config = config if isinstance(config, dict) else {"type": "realtime"}
    tenant = str(state.settings.web.demo_tenant)
    session = check_config(state, Principal(tenant), config)
    key = _demo_key(state, tenant)
    token, expires_at = keys.create_client_secret(key, config, DEMO_SECRET_TTL_S)
    return {"value": token, "expires_at": int(expires_at), "session": session}


def _demo_key(state: AppState, tenant: str) -> ApiKey:
    """The demo tenant's key for the page (made once, named ``web-demo``; revoke it with
    ``parley keys revoke`` to stop the page's sessions)."""
    keys = state.keys
    assert keys is not None
    keys.tenant(tenant, create=True)
    existing = keys.list_keys(tenant)
    for key in existing:
        if key.name == DEMO_KEY_NAME and key.active:
            return key
    if any(key.name == DEMO_KEY_NAME for key in existing):
        raise PermissionDeniedError("The web page's key was revoked: the demo is switched off.")
    _, key = keys.create_key(tenant, name=DEMO_KEY_NAME)
    log.info("made the web page's key %s for tenant %r", key.id, tenant)
    return key
