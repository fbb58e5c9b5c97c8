"""``/v1/realtime/calls``: Realtime sessions over WebRTC, as the ``openai`` SDK's
``realtime.calls.create`` and a browser make them.

``POST /v1/realtime/calls`` takes the caller's SDP offer (multipart ``sdp`` with an optional
``session`` JSON, or a raw ``application/sdp`` body) with a key or an ephemeral key, answers
``201`` with the SDP answer and ``Location: /v1/realtime/calls/{call_id}``, and runs the call's
session until the peer leaves (:mod:`parley.transports.webrtc`). ``POST .../{call_id}/hangup``
(any key of the call's tenant) ends it; a WebSocket to ``/v1/realtime?call_id=`` sits beside it.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.errors import (
    ClientError,
    Code,
    NotFoundError,
    OverloadedError,
    ParleyError,
)
from parley.ids import new_id
from parley.realtime.config import input_format
from parley.server.auth import CALLS_PATH, Principal, principal_of
from parley.server.http_streams import limited
from parley.server.openai_errors import error_response
from parley.server.realtime_ws import Connection
from parley.server.sessions import check_config, open_session, run_session
from parley.server.state import AppState, LiveCall
from parley.transports.webrtc import OfferError, RtcPeer

__all__ = ["CALLS_PATH", "call_routes"]

log = logging.getLogger("parley.server")

MAX_OFFER_BYTES = 128 * 1024  # an SDP offer is a few kB; its session config too


def call_routes(state: AppState) -> list[Route]:
    async def create(request: Request) -> Response:
        try:
            return await _create(request, state)
        except ParleyError as exc:
            return error_response(exc)

    async def hangup(request: Request) -> Response:
        call = _call_of(request, state)
        if call is None:
            return error_response(_no_call(request.path_params["call_id"]))
        call.hangup()
        return Response(status_code=200)

    async def control(request: Request) -> Response:
        try:
            await _control(request, state)
        except ParleyError as exc:
            return error_response(exc)
        return Response(status_code=200)

    return [
        Route(CALLS_PATH, create, methods=["POST"]),
        Route(CALLS_PATH + "/{call_id}/hangup", hangup, methods=["POST"]),
        *(
            Route(CALLS_PATH + "/{call_id}/" + action, control, methods=["POST"])
            for action in ("accept", "reject", "refer")
        ),
    ]


async def _control(request: Request, state: AppState) -> None:
    """``accept`` (a session configuration), ``reject`` (``status_code``) or ``refer``
    (``target_uri``) a phone call, as the ``openai`` SDK's ``realtime.calls`` sends them."""
    call_id = request.path_params["call_id"]
    call = _call_of(request, state)
    if call is None:
        raise _no_call(call_id)
    if call.control is None:
        raise ClientError(
            f"Call '{call_id}' is not a SIP call: it can only be hung up.", param="call_id"
        )
    try:
        body = json.loads(await limited(request, MAX_OFFER_BYTES).body() or b"{}")
    except ValueError:
        raise ClientError("The body is not valid JSON.", code=Code.INVALID_JSON) from None
    if not isinstance(body, dict):
        raise ClientError("The body must be a JSON object.", code=Code.INVALID_TYPE)
    action = request.url.path.rsplit("/", 1)[-1]
    if action == "accept":
        check_config(state, principal_of(request.scope), body)
        await call.control.accept(body)
    elif action == "reject":
        status = body.get("status_code", 603)
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 699:
            raise ClientError(
                "status_code must be a SIP status from 400 to 699.",
                param="status_code",
                code=Code.INVALID_VALUE,
            )
        await call.control.reject(status)
    else:
        target = body.get("target_uri")
        if not isinstance(target, str) or not target.startswith(("tel:", "sip:", "sips:")):
            raise ClientError(
                "target_uri must be a tel:, sip: or sips: URI.",
                param="target_uri",
                code=Code.MISSING_REQUIRED_PARAMETER if target is None else Code.INVALID_VALUE,
            )
        await call.control.refer(target)


def _no_call(call_id: str) -> NotFoundError:
    return NotFoundError(f"No call with id '{call_id}'.", param="call_id")


def _call_of(request: Request, state: AppState) -> LiveCall | None:
    """The call named in the path, if the caller's tenant owns it."""
    call = state.calls.get(request.path_params["call_id"])
    if call is None or call.tenant != principal_of(request.scope).tenant:
        return None
    return call


async def _create(request: Request, state: AppState) -> Response:
    principal = principal_of(request.scope)
    offer, config = await _read_offer(request)
    if config is not None:
        check_config(state, principal, config)
    settings = state.settings.webrtc
    if len(state.calls) >= settings.max_calls:
        raise OverloadedError(
            f"This server is at its limit of {settings.max_calls} WebRTC calls; try again later."
        )
    admission = await state.gate.open_session(principal.key, principal.tenant)
    peer = RtcPeer(
        ice_servers=[s.model_dump(exclude_none=True) for s in settings.ice_servers],
        media_timeout_s=settings.media_timeout_s,
        jitter_packets=settings.jitter_buffer_packets,
    )
    try:
        answer = await peer.answer(offer)
    except OfferError as exc:
        await peer.close()
        await state.gate.close_session(principal.key, admission)
        raise ClientError(str(exc), param="sdp") from None
    connection = open_session(
        state,
        principal,
        peer.wire,
        model=request.query_params.get("model") or "parley",
        timeline=request.query_params.get("parley_timeline") in ("1", "true"),
        media=peer.reply,
        configs=[config] if config is not None else [],
    )
    peer.on_event(connection.emit)
    call = LiveCall(new_id("rtc"), principal.tenant, connection, peer.wire.end)
    state.calls[call.id] = call
    call.task = asyncio.create_task(_run_call(state, principal, call, connection, peer, admission))
    state.sessions.add(call.task)
    call.task.add_done_callback(state.sessions.discard)
    return Response(
        answer,
        status_code=201,
        media_type="application/sdp",
        headers={"Location": f"{CALLS_PATH}/{call.id}"},
    )


async def _run_call(
    state: AppState,
    principal: Principal,
    call: LiveCall,
    connection: Connection,
    peer: RtcPeer,
    admission: str,
) -> None:
    """The call's session, fed by the caller's RTP, until the peer leaves or is hung up."""
    session = connection.session
    state.metrics.session_opened()  # observability (issue 4)
    inbound = asyncio.create_task(
        peer.inbound(connection.inbox.put_audio, lambda: input_format(session.config).sample_rate)
    )
    try:
        await run_session(state, principal, connection, call.id)
    except Exception:  # one call's failure is that call's alone
        log.exception("webrtc call %s failed", call.id)
    finally:
        inbound.cancel()
        state.calls.pop(call.id, None)
        await peer.close()
        await state.gate.close_session(principal.key, admission)
        state.metrics.session_closed()
        why = peer.ended.result() if peer.ended.done() else "ended"
        log.info("webrtc call %s ended: %s", call.id, why)


async def _read_offer(request: Request) -> tuple[str, dict[str, Any] | None]:
    """The SDP offer and the optional session configuration of a create request."""
    content_type = request.headers.get("content-type", "").lower()
    body = limited(request, MAX_OFFER_BYTES)
    if content_type.startswith("application/sdp"):
        return _text(await body.body(), "sdp"), None
    if not content_type.startswith("multipart/form-data"):
        raise ClientError(
            "Send the SDP offer as multipart/form-data (fields 'sdp' and optionally 'session') "
            "or as an application/sdp body.",
            param="sdp",
            code=Code.INVALID_CONTENT_TYPE,
        )
    try:
        form = await body.form(max_files=2, max_fields=4, max_part_size=MAX_OFFER_BYTES)
    except HTTPException as exc:
        raise ClientError(f"Invalid multipart body: {exc.detail}", param="sdp") from None
    try:
        sdp = await _field(form.get("sdp"), "sdp")
        if sdp is None:
            raise ClientError(
                "Missing required parameter: 'sdp'.",
                param="sdp",
                code=Code.MISSING_REQUIRED_PARAMETER,
            )
        session = await _field(form.get("session"), "session")
    finally:
        await form.close()
    if session is None:
        return sdp, None
    try:
        config = json.loads(session)
    except ValueError:
        raise ClientError(
            "'session' is not valid JSON.", param="session", code=Code.INVALID_JSON
        ) from None
    if not isinstance(config, dict):
        raise ClientError(
            "'session' must be a JSON object.", param="session", code=Code.INVALID_TYPE
        )
    return sdp, config


async def _field(value: UploadFile | str | None, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return _text(await value.read(), name)


def _text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ClientError(f"'{name}' is not UTF-8 text.", param=name) from None
