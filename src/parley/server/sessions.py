"""One Realtime session for any door: the WebSocket (``/v1/realtime``), a WebRTC call, and a
WebSocket attached to a running call (``/v1/realtime?call_id=``).

:func:`open_session` builds the pipeline, the sans-I/O session and the connection around them
for a caller; :func:`run_session` serves it until it ends, with its audit records and its key's
watch (revocation, maximum duration).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from starlette.websockets import WebSocket

from parley.engines.registry import languages_of
from parley.errors import (
    ClientError,
    Code,
    ConflictError,
    NotFoundError,
    ParleyError,
    SessionClosedError,
)
from parley.logs import bind
from parley.pipeline import Pipeline
from parley.pipeline.control import Caller
from parley.pipeline.history import History
from parley.realtime.session import RealtimeSession
from parley.server.auth import INSECURE_KEY_PROTOCOL, Principal, principal_of
from parley.server.limits import Gate
from parley.server.openai_errors import error_response
from parley.server.realtime_ws import Connection, Ended, Inbox
from parley.server.state import AppState
from parley.store.shared import SharedStateUnavailable
from parley.transports.wire import Media, WebSocketWire, Wire

__all__ = ["check_config", "open_session", "run_session", "serve_realtime"]

log = logging.getLogger("parley.server")

BETA_SUBPROTOCOL = "openai-beta.realtime-v1"


def open_session(
    state: AppState,
    principal: Principal,
    wire: Wire,
    *,
    kind: Literal["realtime", "transcription"] = "realtime",
    beta: bool = False,
    model: str = "parley",
    timeline: bool = False,
    media: Media | None = None,
    configs: Iterable[Mapping[str, Any]] = (),
) -> Connection:
    """A session for ``principal`` over ``wire``, configured by its ephemeral key's session and
    then each of ``configs`` (validated beforehand: a bad one is skipped with a log line)."""
    engines = state.engines
    inbox = Inbox()
    pipeline = Pipeline(
        engines,
        state.settings,
        input_rate=24000,
        output_rate=24000,
        auto_respond=False,  # the session decides when to respond
        sink=inbox.put_event,
        control=state.control,
        caller=Caller(principal.tenant, principal.limits_key),
        marker=state.marker(principal.tenant),
        custom_voice=functools.partial(state.custom_voice, principal.tenant),
        playout=media.played_ms if media is not None else None,
    )
    session = RealtimeSession(
        state.settings,
        pipeline.history,
        kind=kind,
        beta=beta,
        model=model,
        vision=engines.llm.supports_vision,
        asr_model=engines.asr.name,
        voices=state.voice_names,
        languages=languages_of(engines.asr),
        prompts=state.prompt_resolver(principal.tenant),
        rate_limits=lambda: _rate_limits(state.gate, principal),
        timeline=timeline,
        admit=pipeline.admit,
    )
    if pipeline.control is not None:  # the ledger names the session of each call
        pipeline.control.caller = Caller(principal.tenant, principal.limits_key, session.id)
    # An ephemeral key's session configuration (validated when the key was made) is the
    # session's starting point; a call's own configuration comes on top.
    for config in (principal.session, *configs):
        if config is None:
            continue
        out = session.receive(json.dumps({"type": "session.update", "session": config}))
        if out.events and out.events[0]["type"] == "error":
            log.warning("session %s: its configuration was refused: %s", session.id, out.events)
    return Connection(
        wire,
        session,
        pipeline,
        engines,
        inbox,
        metrics=state.metrics,
        tracer=state.tracer,
        outbox_bytes=state.settings.server.send_buffer_bytes,
        media=media,
    )


async def run_session(
    state: AppState, principal: Principal, connection: Connection, call_id: str | None = None
) -> None:
    """Serve ``connection`` until its session ends (``call_id``: the call it carries, which
    the replicas' registry then names too)."""
    session = connection.session
    bind(session_id=session.id)  # observability (issue 4): this task's and its children's logs
    audit = state.control.audit_append if state.control is not None else None
    who = {"key_id": principal.limits_key, "session_id": session.id}
    if audit is not None:  # the audit log (issue 14): who opened which session
        audit("session.opened", tenant=principal.tenant, type=session.kind, **who)
    pipeline = connection.pipeline
    state.live[connection] = principal
    shared = state.gate.shared
    try:
        if shared is not None:  # which replica holds it (best effort: it runs regardless)
            with contextlib.suppress(SharedStateUnavailable):
                for entry in (session.id, call_id):
                    if entry is not None:
                        await shared.register(entry, principal.tenant)
        async with pipeline:
            await connection.run(lambda: asyncio.ensure_future(_watch(state, principal)))
    finally:
        state.live.pop(connection, None)
        if shared is not None:
            with contextlib.suppress(SharedStateUnavailable):
                for entry in (session.id, call_id):
                    if entry is not None:
                        await shared.unregister(entry)
        if audit is not None:
            route = pipeline.control.route if pipeline.control is not None else ""
            audit("session.closed", tenant=principal.tenant, route=route, **who)


async def serve_realtime(ws: WebSocket, state: AppState) -> None:
    """``/v1/realtime``: a session of its own, or (``?call_id=``) a seat at a running call."""
    principal = principal_of(ws.scope)
    call_id = ws.query_params.get("call_id")
    if call_id is not None:
        await _attach(ws, state, principal, call_id)
        return
    try:
        admission = await state.gate.open_session(principal.key, principal.tenant)
    except ParleyError as exc:  # over the key's limit (429), or no shared state (503)
        await ws.send_denial_response(error_response(exc))
        return
    state.metrics.session_opened()  # observability (issue 4)
    try:
        await _serve_socket(ws, state, principal)
    finally:
        await state.gate.close_session(principal.key, admission)
        state.metrics.session_closed()  # observability (issue 4)


async def _serve_socket(ws: WebSocket, state: AppState, principal: Principal) -> None:
    offered = list(ws.scope.get("subprotocols", []))
    beta = "realtime=v1" in ws.headers.get("openai-beta", "") or BETA_SUBPROTOCOL in offered
    kind: Literal["realtime", "transcription"] = (
        "transcription" if ws.query_params.get("intent") == "transcription" else "realtime"
    )
    await ws.accept(subprotocol=_subprotocol(offered))
    connection = open_session(
        state,
        principal,
        WebSocketWire(ws),
        kind=kind,
        beta=beta,
        model=ws.query_params.get("model") or "parley",
        timeline=ws.query_params.get("parley_timeline") in ("1", "true"),
    )
    await run_session(state, principal, connection)


def _subprotocol(offered: list[str]) -> str | None:
    if "realtime" in offered:
        return "realtime"
    # Browsers must offer a subprotocol to carry the key; answer with one they offered.
    return next((p for p in offered if not p.startswith(INSECURE_KEY_PROTOCOL)), None)


async def _attach(ws: WebSocket, state: AppState, principal: Principal, call_id: str) -> None:
    """A WebSocket beside a running call (as OpenAI's server-side controls): any key of the
    call's tenant; another tenant's call is as unknown as a call that does not exist."""
    call = state.calls.get(call_id)
    if call is None or call.tenant != principal.tenant or call.connection is None:
        await ws.send_denial_response(error_response(await _elsewhere(state, principal, call_id)))
        return
    await ws.accept(subprotocol=_subprotocol(list(ws.scope.get("subprotocols", []))))
    await call.connection.attach(WebSocketWire(ws))


async def _elsewhere(state: AppState, principal: Principal, call_id: str) -> ParleyError:
    """Why a call is not here: held by another replica (409, naming it), or unknown (404)."""
    shared = state.gate.shared
    where = None
    if shared is not None:
        with contextlib.suppress(SharedStateUnavailable):
            where = await shared.where(call_id)
    if where is not None and where.tenant == principal.tenant:
        return ConflictError(
            f"Call '{call_id}' is held by replica {where.replica} ({where.url}): connect there.",
            param="call_id",
        )
    return NotFoundError(f"No call with id '{call_id}'.", param="call_id")


def revoked() -> Ended:
    return Ended(
        SessionClosedError("The API key of this session was revoked.", code=Code.SESSION_REVOKED),
        1008,
    )


async def end_revoked(state: AppState, key_id: str) -> None:
    """A key was revoked on some replica: end its sessions here (``*``: after a lost
    subscription, check every live key against the database)."""
    keys = state.keys
    for connection, principal in list(state.live.items()):
        key = principal.key
        if key is None:
            continue
        if key_id == key.id or (
            key_id == "*"
            and keys is not None
            and not await asyncio.to_thread(keys.is_active, key.id)
        ):
            log.info("realtime session of revoked key %s ended", key.id)
            connection.inbox.put_event(revoked())


async def _watch(state: AppState, principal: Principal) -> Ended:
    """Ends a session when it outlives its key's limit or its key is revoked."""
    key = principal.key
    limit_s = key.limits.max_session_s if key is not None else None
    deadline = None if limit_s is None else time.monotonic() + limit_s
    every = state.settings.server.revocation_check_s
    while True:
        wait = every if deadline is None else min(every, deadline - time.monotonic())
        await asyncio.sleep(max(wait, 0))
        if deadline is not None and time.monotonic() >= deadline:
            return Ended(
                SessionClosedError(
                    f"Your session hit the maximum duration of {limit_s} seconds.",
                    code=Code.SESSION_EXPIRED,
                ),
                1000,
            )
        # SQLite may block (another process's write lock): off the event loop.
        keys = state.keys
        if (
            key is not None
            and keys is not None
            and not await asyncio.to_thread(keys.is_active, key.id)
        ):
            log.info("realtime session of revoked key %s ended", key.id)
            return revoked()


def _rate_limits(gate: Gate, principal: Principal) -> list[dict[str, Any]]:
    remaining, reset = gate.remaining(principal.key)
    if principal.key is None or remaining is None:
        return []
    return [
        {
            "name": "requests",
            "limit": principal.key.limits.requests_per_minute,
            "remaining": remaining,
            "reset_seconds": round(reset, 3),
        }
    ]


def check_config(
    state: AppState,
    principal: Principal,
    config: Mapping[str, Any],
    kind: Literal["realtime", "transcription"] = "realtime",
) -> dict[str, Any]:
    """The session object ``config`` makes for ``principal`` (with its tenant's prompts and
    the server's voices), or the ClientError a ``session.update`` of it would get, with
    ``param`` under ``session.``: what would fail when the session opens fails now."""
    preview = RealtimeSession(
        state.settings,
        History(),
        kind=kind,
        voices=state.voice_names,
        languages=languages_of(state.engines.asr),
        prompts=state.prompt_resolver(principal.tenant),
    )
    out = preview.receive(json.dumps({"type": "session.update", "session": config}))
    if out.events and out.events[0]["type"] == "error":
        error = out.events[0]["error"]
        param = error.get("param")
        raise ClientError(
            error["message"],
            code=error.get("code") or Code.INVALID_VALUE,
            param=f"session.{param.removeprefix('session.')}" if param else None,
        )
    return preview.session_object
