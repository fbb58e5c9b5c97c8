"""Twilio: a phone number's calls as parley sessions, over Media Streams.

``POST /v1/telephony/twilio/voice`` is the number's voice webhook. It checks Twilio's
signature (``X-Twilio-Signature``, by ``telephony.twilio_auth_token``, with the ``twilio``
package's :class:`~twilio.request_validator.RequestValidator`) and answers TwiML that connects
the call to a bidirectional stream::

    <Response><Connect action="https://HOST/v1/telephony/twilio/voice?parley=ended">
      <Stream url="wss://HOST/v1/telephony/twilio/media">
        <Parameter name="profile" value="+15550100"/> (called, caller, tenant, parley_token)

Twilio then opens the WebSocket ``/v1/telephony/twilio/media`` (its upgrade signed too: the
``wss`` URL with no parameters), and the call runs as one :class:`~parley.server.phone.PhoneCall`
whose id is the ``CallSid``. Keypad presses go to the session (``telephony.hangup_digit`` ends
the call, a ``telephony.transfer`` digit transfers it); ``stop`` or a dropped socket ends it.
When the stream closes, Twilio asks the ``<Connect>``'s action URL what next: ``<Dial>`` for a
transfer, else ``<Hangup/>``.

The stream's ``parley_token`` parameter (an HMAC of the call, its profile and the time, by the
auth token) ties each stream to the webhook that asked for it: Twilio's signature on the upgrade
covers only the URL, the same for every call, so a stream without a fresh token is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from starlette.datastructures import URL
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]
from twilio.twiml.voice_response import Connect, VoiceResponse  # type: ignore[import-untyped]

from parley.config import CallProfile, Settings
from parley.errors import ClientError, ParleyError, PermissionDeniedError
from parley.server.auth import TWILIO_MEDIA_PATH, TWILIO_VOICE_PATH
from parley.server.http_streams import limited
from parley.server.openai_errors import error_response
from parley.server.phone import PhoneCall, phone_profile
from parley.server.realtime_ws import Connection
from parley.server.state import AppState
from parley.transports.twilio import (
    RATE,
    Dtmf,
    Mark,
    Media,
    Start,
    Stop,
    TwilioPlayer,
    TwilioProtocolError,
    decode_audio,
    parse,
)
from parley.transports.wire import WireClosed

__all__ = ["stream_token", "twilio_routes"]

log = logging.getLogger("parley.telephony")

MAX_WEBHOOK_BYTES = 64 * 1024  # a voice webhook's form is a few kB
START_WAIT_S = 10.0  # Twilio sends connected and start at once
TOKEN_TTL_S = 300  # a stream starts within seconds of its webhook
ENDED = "ended"  # ?parley= of the <Connect>'s action URL


def twilio_routes(state: AppState) -> list[BaseRoute]:
    """The voice webhook and the media stream."""
    transfers = _Recent()  # CallSid -> where the call goes once its stream closes
    started = _Recent()  # CallSids whose stream started: a token is good for one stream

    async def voice(request: Request) -> Response:
        try:
            return await _voice(request, state, transfers)
        except ParleyError as exc:
            return error_response(exc)

    async def media(ws: WebSocket) -> None:
        settings = state.settings.telephony
        url = _stream_url(settings.public_url, ws.url)
        if not _signed(settings.twilio_auth_token, url, {}, ws.headers):
            log.warning("twilio: a media stream without a valid signature was refused")
            await ws.send_denial_response(_forbidden(settings.twilio_auth_token))
            return
        task = asyncio.current_task()
        assert task is not None
        state.sessions.add(task)  # the server waits for its calls when it stops
        try:
            await _stream(ws, state, transfers, started)
        finally:
            state.sessions.discard(task)

    return [
        Route(TWILIO_VOICE_PATH, voice, methods=["GET", "POST"]),
        WebSocketRoute(TWILIO_MEDIA_PATH, media),
    ]


# --- the webhook ------------------------------------------------------------------------------


async def _voice(request: Request, state: AppState, transfers: _Recent) -> Response:
    settings = state.settings.telephony
    params: Mapping[str, Any] = {}
    if request.method == "POST":
        params = await limited(request, MAX_WEBHOOK_BYTES).form(max_files=0, max_fields=200)
    base = _base_url(settings.public_url, request.url)
    url = base + request.url.path + (f"?{request.url.query}" if request.url.query else "")
    if not _signed(settings.twilio_auth_token, url, params, request.headers):
        log.warning("twilio: a voice webhook without a valid signature was refused")
        return _forbidden(settings.twilio_auth_token)
    values = params if request.method == "POST" else request.query_params
    call_sid = str(values.get("CallSid") or "")
    response = VoiceResponse()
    if request.query_params.get("parley") == ENDED:  # the stream closed: what next
        target = transfers.pop(call_sid)
        if target is None:
            response.hangup()
        else:
            log.info("twilio call %s: transferred to %s", call_sid, target)
            dial = response.dial()
            if target.startswith(("sip:", "sips:")):
                dial.sip(target)
            else:
                dial.number(target.removeprefix("tel:"))
        return _twiml(response)
    if not call_sid:
        raise ClientError("A Twilio voice webhook carries a CallSid.", param="CallSid")
    called = str(values.get("To") or values.get("Called") or "")
    caller = str(values.get("From") or values.get("Caller") or "")
    name = _profile_name(state.settings, called)
    profile = settings.profiles.get(name, CallProfile())
    connect = Connect(action=f"{base}{TWILIO_VOICE_PATH}?parley={ENDED}")
    stream = connect.stream(url=_ws(base) + TWILIO_MEDIA_PATH)
    assert settings.twilio_auth_token is not None  # _signed said so
    for key, value in (
        ("profile", name),
        ("tenant", profile.tenant or settings.tenant),
        ("called", called),
        ("caller", caller),
        ("parley_token", stream_token(settings.twilio_auth_token, call_sid, name)),
    ):
        stream.parameter(name=key, value=value)
    response.append(connect)
    log.info("twilio call %s from %s to %s: profile %r", call_sid, caller, called, name)
    return _twiml(response)


def _twiml(response: VoiceResponse) -> Response:
    return Response(str(response), media_type="application/xml")


def _forbidden(token: str | None) -> Response:
    why = (
        "Twilio's signature (X-Twilio-Signature) is missing or wrong."
        if token
        else "Twilio is not set up on this server: telephony.twilio_auth_token is unset."
    )
    return error_response(PermissionDeniedError(why))


def _signed(
    token: str | None, url: str, params: Mapping[str, Any], headers: Mapping[str, str]
) -> bool:
    signature = headers.get("x-twilio-signature")
    if not token or not signature:
        return False
    return bool(RequestValidator(token).validate(url, params, signature))


def _base_url(public_url: str | None, url: URL) -> str:
    """How Twilio reaches this server: ``telephony.public_url``, else the request's own."""
    if public_url:
        return public_url.rstrip("/")
    return f"{url.scheme}://{url.netloc}"


def _ws(base: str) -> str:
    for http, ws in (("https://", "wss://"), ("http://", "ws://")):
        if base.startswith(http):
            return ws + base.removeprefix(http)
    return base


def _stream_url(public_url: str | None, url: URL) -> str:
    """The URL Twilio signed when it opened the stream: the one in the TwiML, no query."""
    if public_url:
        return _ws(public_url.rstrip("/")) + url.path
    return f"{url.scheme}://{url.netloc}{url.path}"


def _profile_name(settings: Settings, called: str) -> str:
    """The name in ``[telephony.profiles]`` of the called number's profile ("" for none)."""
    chosen = phone_profile(settings, called)
    return next((n for n, p in settings.telephony.profiles.items() if p is chosen), "")


def stream_token(auth_token: str, call_sid: str, profile: str, issued: int | None = None) -> str:
    """What ties a stream to its webhook: the call, its profile and the time, signed (the
    ``twilio`` package's HMAC, by the auth token)."""
    issued = int(time.time()) if issued is None else issued
    signed = RequestValidator(auth_token).compute_signature(
        f"parley:twilio-stream:{call_sid}:{issued}", {"profile": profile}
    )
    return f"{issued}.{signed}"


def _token_ok(auth_token: str, start: Start) -> bool:
    token = start.parameters.get("parley_token", "")
    issued, _, _ = token.partition(".")
    if not issued.isdigit() or abs(time.time() - int(issued)) > TOKEN_TTL_S:
        return False
    profile = start.parameters.get("profile", "")
    expected = stream_token(auth_token, start.call_sid, profile, int(issued))
    return hmac.compare_digest(expected.encode(), token.encode())


class _Recent:
    """A few minutes' memory of calls by CallSid (bounded: entries expire)."""

    def __init__(self, ttl_s: float = TOKEN_TTL_S, most: int = 10000) -> None:
        self.ttl_s, self.most = ttl_s, most
        self._items: dict[str, tuple[float, str]] = {}

    def put(self, key: str, value: str = "") -> None:
        now = time.monotonic()
        self._items.pop(key, None)
        self._items[key] = (now, value)
        while self._items:
            oldest = next(iter(self._items))
            if now - self._items[oldest][0] <= self.ttl_s and len(self._items) <= self.most:
                break
            del self._items[oldest]

    def __contains__(self, key: str) -> bool:
        item = self._items.get(key)
        return item is not None and time.monotonic() - item[0] <= self.ttl_s

    def pop(self, key: str) -> str | None:
        item = self._items.pop(key, None)
        return None if item is None or time.monotonic() - item[0] > self.ttl_s else item[1]


# --- the media stream -------------------------------------------------------------------------


class _Socket:
    """The stream's WebSocket, sent to by the player and closed once, from anywhere."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.closed = False
        self._closing: asyncio.Task[None] | None = None

    async def send(self, text: str) -> None:
        if self.closed:
            raise WireClosed
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise WireClosed from exc

    async def close(self, code: int = 1000, reason: str = "") -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            await self.ws.close(code, reason)

    def close_soon(self, reason: str) -> None:
        if not self.closed and self._closing is None:
            self._closing = asyncio.ensure_future(self.close(1000, reason))


class _Control:
    """What an application may do with a Twilio call through ``/v1/realtime/calls/{CallSid}``:
    hang it up, or transfer it (``refer``); it was answered by its webhook."""

    def __init__(self, transfer: Callable[[str], None]) -> None:
        self._transfer = transfer

    async def accept(self, config: dict[str, Any]) -> None:
        raise ClientError("A Twilio call is answered by its voice webhook: nothing to accept.")

    async def reject(self, status_code: int) -> None:
        raise ClientError("A Twilio call is already answered: hang it up instead.")

    async def refer(self, target_uri: str) -> None:
        self._transfer(target_uri)


async def _first_start(ws: WebSocket) -> Start:
    """Twilio's ``start`` (after ``connected``)."""
    while True:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            raise TwilioProtocolError("the stream closed before its start")
        parsed = parse(message.get("text") or message.get("bytes") or b"")
        if isinstance(parsed, Start):
            return parsed
        if isinstance(parsed, Stop):
            raise TwilioProtocolError("the stream stopped before its start")


def _refusal(start: Start, auth_token: str, started: _Recent, state: AppState) -> str | None:
    if not _token_ok(auth_token, start):
        return "its parley_token is missing, wrong or stale (not from this server's webhook)"
    if start.call_sid in started or start.call_sid in state.calls:
        return "the call already has a stream"
    if (start.encoding, start.sample_rate, start.channels) != ("audio/x-mulaw", RATE, 1):
        return f"{start.encoding} at {start.sample_rate} Hz x {start.channels} is not G.711 mu-law"
    return None


async def _stream(ws: WebSocket, state: AppState, transfers: _Recent, started: _Recent) -> None:
    settings = state.settings.telephony
    assert settings.twilio_auth_token is not None  # the upgrade was signed with it
    await ws.accept()
    socket = _Socket(ws)
    try:
        async with asyncio.timeout(START_WAIT_S):
            start = await _first_start(ws)
    except (TimeoutError, TwilioProtocolError, WebSocketDisconnect, RuntimeError) as exc:
        log.warning("twilio: a stream without its start was closed: %s", exc or "timeout")
        await socket.close(1008, "no start message")
        return
    refusal = _refusal(start, settings.twilio_auth_token, started, state)
    if refusal is not None:
        log.warning(
            "twilio: stream %s of call %s refused: %s", start.stream_sid, start.call_sid, refusal
        )
        await socket.close(1008, "refused")
        return
    started.put(start.call_sid)
    name = start.parameters.get("profile", "")
    profile = settings.profiles.get(name) or phone_profile(
        state.settings, start.parameters.get("called")
    )
    player = TwilioPlayer(start.stream_sid)
    call: PhoneCall | None = None

    def hangup() -> None:
        socket.close_soon("call ended")
        if call is not None:
            call.end()

    def transfer(target: str) -> None:
        log.info("twilio call %s: transferring to %s", start.call_sid, target)
        transfers.put(start.call_sid, target)  # the <Connect>'s action URL dials it
        hangup()

    call = PhoneCall(state, start.call_sid, profile, hangup=hangup, control=_Control(transfer))
    player.on_overflow = hangup
    try:
        connection = call.answer(player)
    except Exception:
        call.close()
        await socket.close(1011, "call failed")
        raise
    player.emit = connection.emit

    def digit(pressed: str) -> None:
        if pressed == settings.hangup_digit:
            log.info("twilio call %s: the caller pressed %s: hanging up", start.call_sid, pressed)
            hangup()
        elif (target := settings.transfer.get(pressed)) is not None:
            transfer(target)
        else:
            connection.dtmf(pressed)

    log.info("twilio call %s: stream %s started", start.call_sid, start.stream_sid)
    try:
        await call.serve(
            _read(ws, socket, call, connection, player, digit), player.run(socket.send)
        )
    finally:
        await socket.close(1000, "call ended")
        log.info("twilio call %s ended", start.call_sid)


async def _read(
    ws: WebSocket,
    socket: _Socket,
    call: PhoneCall,
    connection: Connection,
    player: TwilioPlayer,
    digit: Callable[[str], None],
) -> None:
    """The stream's messages, until ``stop`` or the socket is gone; then the call ends."""
    try:
        while True:
            try:
                message = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            try:
                parsed = parse(message.get("text") or message.get("bytes") or b"")
            except TwilioProtocolError as exc:
                log.warning("twilio call %s: %s; closing the stream", call.call.id, exc)
                await socket.close(1007, "invalid message")
                return
            match parsed:
                case Media(track=track, payload=payload) if track != "outbound" and payload:
                    await connection.inbox.put_audio(decode_audio(payload))
                case Mark(name=name):
                    player.on_mark(name)
                case Dtmf(digit=pressed):
                    digit(pressed)
                case Stop():
                    await socket.close(1000, "stream stopped")  # at once: nothing more to say
                    return
    finally:
        call.end()
