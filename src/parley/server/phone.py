"""What every phone door shares (Twilio Media Streams, SIP): which profile a called number gets,
and one call as one parley session owned by ``telephony.tenant``.

A phone call's session hears and speaks G.711 at 8 kHz (``audio/pcmu``), starts from the called
number's profile (``[telephony.profiles."+15550100"]``, else ``default``), has the same pipeline,
routing, metering, watermark and audit as any session, and is registered as a
:class:`~parley.server.state.LiveCall` under the call's id, so that an application with a key of
the tenant can attach to it (``/v1/realtime?call_id=``) and, for SIP, control it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

import phonenumbers

from parley.config import CallProfile, Settings
from parley.server.auth import Principal
from parley.server.realtime_ws import Connection
from parley.server.sessions import open_session, run_session
from parley.server.state import AppState, CallControl, LiveCall
from parley.transports.wire import Media, NullWire

__all__ = ["PHONE_AUDIO", "PhoneCall", "phone_profile"]

log = logging.getLogger("parley.telephony")

# A phone line's audio both ways: G.711 mu-law at 8 kHz.
PHONE_AUDIO: dict[str, Any] = {
    "type": "realtime",
    "audio": {
        "input": {"format": {"type": "audio/pcmu"}},
        "output": {"format": {"type": "audio/pcmu"}},
    },
}


def _e164(number: str | None) -> str | None:
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, None)
    except phonenumbers.NumberParseException:
        return number.strip()
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def phone_profile(settings: Settings, called: str | None) -> CallProfile:
    """The profile of the called number (compared in E.164), else ``default``, else none."""
    profiles = settings.telephony.profiles
    wanted = _e164(called)
    for number, profile in profiles.items():
        if number != "default" and wanted is not None and _e164(number) == wanted:
            return profile
    return profiles.get("default", CallProfile())


class PhoneCall:
    """One phone call's session: built when the call is answered, served until it ends."""

    def __init__(
        self,
        state: AppState,
        call_id: str,
        profile: CallProfile,
        *,
        hangup: Callable[[], None],
        control: CallControl | None = None,
    ) -> None:
        self.state = state
        tenant = profile.tenant or state.settings.telephony.tenant
        self.principal = Principal(tenant)
        self.profile = profile
        self.call = LiveCall(call_id, tenant, None, hangup, control=control)
        self.wire = NullWire()
        state.calls[call_id] = self.call

    def answer(self, media: Media, config: Mapping[str, Any] | None = None) -> Connection:
        """The call's session: G.711 audio, the profile's configuration, then ``config`` (an
        application's ``accept``)."""
        settings = self.state.settings.telephony
        configs: list[Mapping[str, Any]] = [PHONE_AUDIO]
        if self.profile.session:
            configs.append({"type": "realtime", **self.profile.session})
        if config:
            configs.append(config)
            configs.append(PHONE_AUDIO)  # whatever the application asked, the line is G.711
        connection = open_session(
            self.state, self.principal, self.wire, timeline=True, media=media, configs=configs
        )
        connection.dtmf_response_s = settings.dtmf_response_ms / 1000
        self.call.connection = connection
        return connection

    async def serve(self, *feeders: Coroutine[Any, Any, None]) -> None:
        """Run the answered call's session, with ``feeders`` (the transport's media and
        signalling tasks) beside it, until it ends; then unregister the call."""
        connection = self.call.connection
        assert connection is not None, "answer() the call first"
        state = self.state
        state.metrics.session_opened()  # observability (issue 4)
        tasks = [asyncio.ensure_future(f) for f in feeders]
        try:
            await run_session(state, self.principal, connection, self.call.id)
        except Exception:  # one call's failure is that call's alone
            log.exception("phone call %s failed", self.call.id)
        finally:
            for task in tasks:
                task.cancel()
            state.metrics.session_closed()
            self.close()

    def end(self) -> None:
        """End the call's session (the caller hung up, the line dropped)."""
        self.wire.end()

    def close(self) -> None:
        """Forget the call (also a call that was never answered)."""
        self.wire.end()
        if self.state.calls.get(self.call.id) is self.call:
            del self.state.calls[self.call.id]
