"""SIP calls with OpenAI's call-control API: a SIP trunk pointed at parley reaches a voice agent.

With ``telephony.sip_listen = "HOST:PORT"`` the server runs a SIP user agent
(:mod:`parley.transports.sip`, PJSIP) on UDP and TCP (and TLS on ``sip_tls_port`` where a
certificate and key are configured). Each INVITE becomes a :class:`~parley.server.phone.PhoneCall`
with an id like OpenAI's (``rtc_...``), and rings (180) while:

- with ``telephony.webhook_url``: parley POSTs OpenAI's ``realtime.call.incoming`` event
  (``{"data": {"call_id", "sip_headers"}}``), signed as Standard Webhooks
  (``webhook-id``, ``webhook-timestamp``, ``webhook-signature``) with ``telephony.webhook_secret``
  so that the ``openai`` SDK's ``client.webhooks.unwrap`` verifies it, retrying while the call
  rings. The application (a key of ``telephony.tenant``) then calls
  ``POST /v1/realtime/calls/{call_id}/accept`` (a session configuration: 200 OK, the session
  starts), ``/reject`` (``status_code``) or ``/hangup``; nothing within ``accept_timeout_s``: 480.
- without a webhook: the call is answered at once with the called number's profile.

Once answered, ``/v1/realtime?call_id=`` attaches a WebSocket to the session, ``/refer`` transfers
the call (SIP REFER to ``target_uri``; when the target answers, parley hangs up) and ``/hangup``
sends BYE. Keypad presses (RFC 4733) reach the session, except ``telephony.hangup_digit`` (BYE)
and the digits of ``telephony.transfer`` (REFER). A hold (re-INVITE with ``sendonly`` or
``inactive``) pauses the call's audio both ways; BYE from either side, ``rtp_timeout_s`` without
RTP and the server stopping end the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
from standardwebhooks import Webhook

from parley.config import Settings
from parley.errors import ClientError, ConfigError
from parley.ids import new_id
from parley.server.phone import PhoneCall, phone_profile
from parley.server.realtime_ws import Connection
from parley.server.state import AppState
from parley.transports.sip import (
    SipAgent,
    SipCall,
    SipConfig,
    SipError,
    load_pjsua2,
    parse_listen,
)

__all__ = ["check_sip", "incoming_event", "sip_lifespan"]

log = logging.getLogger("parley.telephony")

TIMEOUT_STATUS = 480  # Temporarily Unavailable: nobody accepted the call in time
WEBHOOK_TIMEOUT_S = 5.0  # one delivery attempt
RETRY_FIRST_S = 0.5  # delivery retries back off from here, doubling, while the call rings


def sip_lifespan(state: AppState) -> contextlib.AbstractAsyncContextManager[None]:
    """The SIP door for the app's lifespan: starts the user agent when ``telephony.sip_listen``
    is set (a clear error if pjsua2 is missing), and on exit hangs up every call and stops."""
    return _lifespan(state)


def check_sip(settings: Settings) -> tuple[str, int]:
    """Where SIP listens (``telephony.sip_listen``, which must be set); a ConfigError for a bad
    setting, SipUnavailable without the 'sip' extra. For a one-line error before serving."""
    telephony = settings.telephony
    assert telephony.sip_listen is not None
    load_pjsua2()
    if telephony.webhook_url and not telephony.webhook_secret:
        raise ConfigError("telephony.webhook_url needs telephony.webhook_secret (whsec_...)")
    if (telephony.sip_tls_cert is None) != (telephony.sip_tls_key is None):
        raise ConfigError("SIP over TLS needs both telephony.sip_tls_cert and sip_tls_key")
    try:
        return parse_listen(telephony.sip_listen)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@contextlib.asynccontextmanager
async def _lifespan(state: AppState) -> AsyncIterator[None]:
    settings = state.settings.telephony
    if not settings.sip_listen:
        yield
        return
    host, port = check_sip(state.settings)
    door = _Door(state)
    agent = SipAgent(
        SipConfig(
            host,
            port,
            tls_port=settings.sip_tls_port,
            tls_cert=str(settings.sip_tls_cert) if settings.sip_tls_cert else None,
            tls_key=str(settings.sip_tls_key) if settings.sip_tls_key else None,
            rtp_timeout_s=settings.rtp_timeout_s,
        ),
        door.incoming,
    )
    try:
        await agent.start()
        try:
            yield
        finally:
            await agent.stop()  # BYE to every call, 503 to ringing ones
    finally:
        await door.close()


class _Door:
    """Every SIP call of the server, from INVITE to its end."""

    def __init__(self, state: AppState) -> None:
        self.state = state
        self.http = httpx.AsyncClient(timeout=WEBHOOK_TIMEOUT_S, follow_redirects=False)
        self.tasks: set[asyncio.Task[None]] = set()

    def incoming(self, call: SipCall) -> None:
        line = _Line(self, call)
        task = asyncio.create_task(line.run())
        self.tasks.add(task)
        self.state.sessions.add(task)  # the server waits for its calls when it stops
        task.add_done_callback(self.tasks.discard)
        task.add_done_callback(self.state.sessions.discard)

    async def close(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=5)
        await self.http.aclose()


def incoming_event(call_id: str, headers: list[tuple[str, str]]) -> dict[str, Any]:
    """OpenAI's ``realtime.call.incoming`` event for a ringing call."""
    return {
        "object": "event",
        "id": new_id("evt"),
        "type": "realtime.call.incoming",
        "created_at": int(time.time()),
        "data": {
            "call_id": call_id,
            "sip_headers": [{"name": name, "value": value} for name, value in headers],
        },
    }


class _Line:
    """One SIP call as a parley phone call, and its control (:class:`CallControl`)."""

    def __init__(self, door: _Door, call: SipCall) -> None:
        self.door = door
        self.state = door.state
        self.call = call
        settings = self.state.settings.telephony
        incoming = call.incoming
        self.phone = PhoneCall(
            self.state,
            new_id("rtc"),
            phone_profile(self.state.settings, incoming.called),
            hangup=self.hangup,
            control=self,
        )
        self.id = self.phone.call.id
        self.decided: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.answering = False  # an accept is under way or done
        log.info(
            "sip call %s: from %s to %s (%s)",
            self.id,
            incoming.caller,
            incoming.called,
            "ringing" if settings.webhook_url else "answering",
        )

    # --- CallControl (the application's /v1/realtime/calls/{call_id}/...) ---------------------

    async def accept(self, config: dict[str, Any]) -> None:
        await self._answer(config)

    async def reject(self, status_code: int) -> None:
        self._ringing("rejected")
        self._decide(False)
        try:
            await self.call.reject(status_code)
        except SipError as exc:
            raise ClientError(f"Call '{self.id}' cannot be rejected: {exc}.") from None
        log.info("sip call %s: rejected with %d", self.id, status_code)

    async def refer(self, target_uri: str) -> None:
        if not self.call.answered:
            raise ClientError(f"Call '{self.id}' is not answered: accept it before a transfer.")
        self._live("transferred")
        try:
            await self.call.refer(target_uri)
        except SipError as exc:
            raise ClientError(f"Call '{self.id}' cannot be transferred: {exc}.") from None
        log.info("sip call %s: REFER to %s", self.id, target_uri)

    def hangup(self) -> None:
        """BYE an answered call; 603 Decline to a ringing one."""
        self._decide(False)
        self.call.hangup("hung up by the application")

    def _ringing(self, what: str) -> None:
        if self.call.ended.done() or (self.decided.done() and not self.decided.result()):
            raise ClientError(f"Call '{self.id}' has ended: it cannot be {what}.")
        if self.answering:
            raise ClientError(f"Call '{self.id}' is answered already: it cannot be {what}.")

    def _live(self, what: str) -> None:
        if self.call.ended.done():
            raise ClientError(f"Call '{self.id}' has ended: it cannot be {what}.")

    def _decide(self, answered: bool) -> None:
        if not self.decided.done():
            self.decided.set_result(answered)

    async def _answer(self, config: dict[str, Any] | None) -> Connection:
        self._ringing("accepted")
        self.answering = True
        connection = self.phone.answer(self.call.reply, config)
        try:
            await self.call.answer()
        except SipError as exc:
            self._decide(False)
            raise ClientError(f"Call '{self.id}' cannot be accepted: {exc}.") from None
        self._decide(True)
        return connection

    # --- the call's life ----------------------------------------------------------------------

    async def run(self) -> None:
        settings = self.state.settings.telephony
        call = self.call
        try:
            if settings.webhook_url:
                notify = asyncio.create_task(self._notify(settings.webhook_url))
                try:
                    waiting: list[asyncio.Future[Any]] = [self.decided, call.ended]
                    async with asyncio.timeout(settings.accept_timeout_s):
                        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                except TimeoutError:
                    pass
                finally:
                    notify.cancel()
                if not self.decided.done() and not call.ended.done():
                    log.info("sip call %s: not accepted in time: %d", self.id, TIMEOUT_STATUS)
                    self._decide(False)
                    with contextlib.suppress(SipError):
                        await call.reject(TIMEOUT_STATUS)
            else:
                with contextlib.suppress(ClientError):  # the caller left meanwhile
                    await self._answer(None)
            if not (self.decided.done() and self.decided.result()) or call.ended.done():
                return
            await self._serve()
        finally:
            why = await call.ended if call.ended.done() else "ended"
            call.hangup("the session ended")  # no-op when the call ended first
            self.phone.close()
            log.info("sip call %s ended: %s", self.id, why)

    async def _serve(self) -> None:
        call, phone = self.call, self.phone
        connection = phone.call.connection
        assert connection is not None
        settings = self.state.settings.telephony
        call.reply.emit = connection.emit
        transfers: set[asyncio.Future[None]] = set()

        def digit(pressed: str) -> None:
            if pressed == settings.hangup_digit:
                log.info("sip call %s: the caller pressed %s: hanging up", self.id, pressed)
                call.hangup(f"the caller pressed {pressed}")
            elif (target := settings.transfer.get(pressed)) is not None:
                log.info("sip call %s: key %s: REFER to %s", self.id, pressed, target)
                transfers.add(task := asyncio.ensure_future(self._transfer(target)))
                task.add_done_callback(transfers.discard)
            else:
                connection.dtmf(pressed)

        def transfer(status: int, reason: str, final: bool) -> None:
            log.info("sip call %s: transfer: %d %s", self.id, status, reason)
            if final and status >= 300:
                log.warning("sip call %s: the transfer failed: %d %s", self.id, status, reason)

        call.on_dtmf = digit
        call.on_transfer = transfer
        call.on_hold = lambda held: log.info(
            "sip call %s: %s", self.id, "on hold" if held else "off hold"
        )

        async def feed() -> None:
            while True:
                await connection.inbox.put_audio(await call.frames.get())

        async def watch() -> None:
            why = await call.ended
            log.info("sip call %s: %s", self.id, why)
            phone.end()

        log.info("sip call %s: answered", self.id)
        await phone.serve(feed(), watch())

    async def _transfer(self, target: str) -> None:
        with contextlib.suppress(SipError):
            await self.call.refer(target)

    async def _notify(self, url: str) -> None:
        """Deliver ``realtime.call.incoming`` until the application takes it (2xx), refuses
        it (4xx other than 408/429: the call is declined), or the call stops ringing."""
        secret = self.state.settings.telephony.webhook_secret
        assert secret is not None
        body = json.dumps(incoming_event(self.id, self.call.incoming.headers))
        webhook_id = new_id("wh")
        signer = Webhook(secret)
        delay = RETRY_FIRST_S
        while True:
            now = datetime.datetime.now(tz=datetime.UTC)
            headers = {
                "content-type": "application/json",
                "user-agent": "parley-webhooks",
                "webhook-id": webhook_id,
                "webhook-timestamp": str(int(now.timestamp())),
                "webhook-signature": signer.sign(webhook_id, now, body),
            }
            try:
                response = await self.door.http.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("sip call %s: the webhook at %s failed: %s", self.id, url, exc)
            else:
                status = response.status_code
                if 200 <= status < 300:
                    log.info("sip call %s: realtime.call.incoming delivered", self.id)
                    return
                log.warning("sip call %s: the webhook answered %d", self.id, status)
                if 400 <= status < 500 and status not in (408, 429):
                    self._decide(False)
                    with contextlib.suppress(SipError):
                        await self.call.reject(TIMEOUT_STATUS)
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, 8.0)
