"""A SIP user agent on PJSIP's ``pjsua2``: phone calls with G.711 RTP, bridged to asyncio.

One :class:`SipAgent` per process (pjsua2 has one endpoint per process) listens on UDP and TCP
at ``HOST:PORT`` (and TLS where a certificate is given), offers only PCMU and PCMA at 8 kHz,
takes RFC 4733 keypad events, and hands each INVITE to asyncio as a :class:`SipCall`, ringing
(180) until it is answered, rejected or cancelled. PJSIP parses and answers every message; this
module only moves audio and decisions across threads.

Threads: PJSIP's signalling runs on one thread of this module's own (``libHandleEvents``), where
every pjsua2 object is made, used and dropped; commands from asyncio queue up for it. Audio
crosses on PJSIP's media clock: each call's port (an ``AudioMediaPort`` on the conference
bridge, :mod:`parley.transports.sip_media`) hands the caller's 20 ms frames to asyncio and takes
the next 20 ms of the reply from :class:`SipReply`, which therefore knows how much of each reply
went out as RTP.
Every callback into Python catches everything: an exception must never reach PJSIP.

PJSIP is GPL-2.0: ``pjsua2`` is imported only when an agent starts (the extra ``parley[sip]``).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from parley.audio.frames import Frame
from parley.transports.sip_media import RATE, SipReply, guard, port_class, vector_reader

__all__ = [
    "RATE",
    "Incoming",
    "SipAgent",
    "SipCall",
    "SipConfig",
    "SipError",
    "SipReply",
    "SipUnavailable",
    "incoming_of",
    "parse_listen",
]

log = logging.getLogger("parley.sip")

CODECS = ("PCMU/8000/1", "PCMA/8000/1")
TICK_S = 0.01  # how long the signalling thread waits for network events between commands
CHECK_S = 0.5  # how often RTP timeouts are looked for
MAX_QUEUED_FRAMES = 500  # 10 s of caller audio the session has not taken: older frames drop
_HIDDEN_HEADERS = {"authorization", "proxy-authorization"}  # never passed on (as OpenAI)


class SipUnavailable(RuntimeError):
    """pjsua2 is not installed (or cannot load)."""


class SipError(RuntimeError):
    """A SIP operation failed (the message says why)."""


def load_pjsua2() -> ModuleType:
    try:
        import pjsua2  # type: ignore[import-untyped]
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise SipUnavailable(
            "telephony.sip_listen is set but PJSIP's pjsua2 is not installed: install the "
            "'sip' extra (pip install 'parley[sip]'; PJSIP is GPL-2.0)"
        ) from exc
    module: ModuleType = pjsua2
    return module


# --- the INVITE as asyncio sees it ------------------------------------------------------------


@dataclass(frozen=True)
class Incoming:
    """What an INVITE said: its Request-URI, the called and calling users, and its headers
    (in order, repeats kept, credentials left out), as PJSIP received them."""

    request_uri: str
    called: str | None
    caller: str | None
    headers: list[tuple[str, str]]
    source: str


_URI_USER = re.compile(r"(?:sips?|tel):([^@;>?\s]+)", re.IGNORECASE)


def _user(uri: str) -> str | None:
    match = _URI_USER.search(uri)
    return match.group(1) if match else None


def incoming_of(message: str, source: str) -> Incoming:
    """The INVITE's request line and header fields. PJSIP has parsed and accepted the message
    already; this only lists its head's fields, unfolding continuation lines."""
    head = message.replace("\r\n", "\n").split("\n\n", 1)[0].split("\n")
    parts = head[0].split()
    request_uri = parts[1] if len(parts) >= 3 else ""
    headers: list[tuple[str, str]] = []
    for line in head[1:]:
        if line[:1] in (" ", "\t") and headers:
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {line.strip()}")
        elif ":" in line:
            name, value = line.split(":", 1)
            headers.append((name.strip(), value.strip()))
    headers = [(n, v) for n, v in headers if n.lower() not in _HIDDEN_HEADERS]
    sender = next((v for n, v in headers if n.lower() in ("from", "f")), "")
    to = next((v for n, v in headers if n.lower() in ("to", "t")), "")
    return Incoming(request_uri, _user(request_uri) or _user(to), _user(sender), headers, source)


# --- a call as asyncio sees it ----------------------------------------------------------------


@dataclass(eq=False)
class SipCall:
    """One INVITE, ringing until it is answered, rejected or cancelled. The caller's audio
    queues in :attr:`frames`; the callbacks run on the event loop; :attr:`ended` resolves with
    why the call ended."""

    agent: SipAgent
    pj_id: int
    incoming: Incoming
    reply: SipReply
    ended: asyncio.Future[str]
    on_dtmf: Callable[[str], None] | None = None
    on_hold: Callable[[bool], None] | None = None
    on_transfer: Callable[[int, str, bool], None] | None = None  # status, reason, final
    answered: bool = False
    held: bool = False
    frames: asyncio.Queue[Frame] = field(
        default_factory=lambda: asyncio.Queue(maxsize=MAX_QUEUED_FRAMES)
    )

    async def answer(self) -> None:
        """200 OK: the call's media starts flowing."""
        await self.agent.run(lambda: self.agent._answer(self.pj_id, 200))
        self.answered = True

    async def reject(self, status_code: int) -> None:
        """Refuse the ringing call with a SIP status (4xx-6xx)."""
        await self.agent.run(lambda: self.agent._answer(self.pj_id, status_code))

    async def refer(self, target_uri: str) -> None:
        """Transfer the call (REFER); :attr:`on_transfer` hears how it goes."""
        await self.agent.run(lambda: self.agent._refer(self.pj_id, target_uri))

    def hangup(self, reason: str = "hung up", status_code: int = 603) -> None:
        """BYE an answered call, ``status_code`` to a ringing one; no-op once it ended."""
        if not self.ended.done():
            self.agent.submit(lambda: self.agent._hangup(self.pj_id, status_code, reason))

    def _audio(self, frame: Frame) -> None:
        if self.frames.full():  # the session is not taking audio: drop the oldest
            self.frames.get_nowait()
        self.frames.put_nowait(frame)

    def _end(self, why: str) -> None:
        self.reply.end()
        if not self.ended.done():
            self.ended.set_result(why)


# --- PJSIP's side (the signalling thread and the media clock) ---------------------------------


@dataclass
class SipConfig:
    host: str
    port: int
    tls_port: int | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    rtp_timeout_s: float = 20.0
    max_calls: int = 32  # PJSIP caps it at its build's PJSUA_MAX_CALLS (4 in pjsua2-python)
    user_agent: str = "parley"


def parse_listen(listen: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``[v6]:PORT`` too) to its parts."""
    host, sep, port = listen.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"telephony.sip_listen must be HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


_running: SipAgent | None = None  # pjsua2: one endpoint per process


class SipAgent:
    """The process's SIP user agent. ``on_call`` gets each INVITE (on the event loop), ringing."""

    def __init__(self, config: SipConfig, on_call: Callable[[SipCall], None]) -> None:
        self.config = config
        self.on_call = on_call
        self._commands: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lines: dict[int, _Line] = {}  # pj call id -> the call (signalling thread only)
        self.calls: dict[int, SipCall] = {}  # the event loop's view

    # --- the event loop's side ----------------------------------------------------------------

    async def start(self) -> None:
        global _running
        if _running is not None:
            raise RuntimeError("a SIP agent already runs in this process (one per process)")
        self.pj = load_pjsua2()
        self._loop = asyncio.get_running_loop()
        ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._main, args=(ready,), name="parley-sip")
        self._thread.daemon = True
        _running = self
        self._thread.start()
        try:
            await asyncio.wrap_future(ready)
        except BaseException:
            _running = None
            raise

    async def stop(self, wait_s: float = 3.0) -> None:
        """Hang up every call (BYE, or 503 to a ringing one), then shut PJSIP down."""
        global _running
        if self._thread is None:
            return
        for call in list(self.calls.values()):
            call.hangup("the server is stopping", 503)
        pending = [c.ended for c in self.calls.values()]
        if pending:
            await asyncio.wait(pending, timeout=wait_s)
        self._stopping = True
        await asyncio.to_thread(self._thread.join, 10)
        self._thread = None
        _running = None

    def submit(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the signalling thread (its errors are logged)."""
        self._commands.put(fn)

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """Run ``fn`` on the signalling thread; the future holds its result (or SipError)."""
        loop = self._loop
        assert loop is not None
        future: asyncio.Future[Any] = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        def command() -> None:
            try:
                self.post(settle, fn(), None)
            except self.pj.Error as exc:
                self.post(settle, None, SipError(exc.info()))
            except Exception as exc:
                self.post(settle, None, exc)

        self._commands.put(command)
        return future

    def post(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the event loop (from any thread)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(fn, *args)

    # --- the signalling thread ----------------------------------------------------------------

    def _main(self, ready: concurrent.futures.Future[None]) -> None:
        try:
            self._setup()
        except BaseException as exc:
            ready.set_exception(exc if not isinstance(exc, self.pj.Error) else SipError(exc.info()))
            self._teardown()
            return
        ready.set_result(None)
        checked = time.monotonic()
        while not self._stopping:
            while True:
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    break
                try:
                    command()
                except self.pj.Error as exc:
                    log.warning("sip: %s", exc.info())
                except Exception:
                    log.exception("sip: a command failed")
            self._ep.libHandleEvents(int(TICK_S * 1000))
            if time.monotonic() - checked >= CHECK_S:
                checked = time.monotonic()
                for line in list(self._lines.values()):
                    line.check_rtp(checked, self.config.rtp_timeout_s)
        self._teardown()

    def _setup(self) -> None:
        pj, config = self.pj, self.config
        self._read = vector_reader(pj)
        self._ep = ep = pj.Endpoint()
        ep.libCreate()
        cfg = pj.EpConfig()
        cfg.uaConfig.threadCnt = 0  # signalling runs in _main's libHandleEvents
        cfg.uaConfig.mainThreadOnly = False
        cfg.uaConfig.maxCalls = config.max_calls
        cfg.uaConfig.userAgent = config.user_agent
        debug = log.isEnabledFor(logging.DEBUG)
        self._writer = _LogWriter(pj)
        cfg.logConfig.writer = self._writer
        cfg.logConfig.level = cfg.logConfig.consoleLevel = 5 if debug else 2
        cfg.logConfig.msgLogging = debug
        media = cfg.medConfig
        media.clockRate = media.sndClockRate = RATE  # the bridge runs at 8 kHz: no resampling
        media.channelCount = 1
        media.audioFramePtime = media.ptime = 20
        media.ecTailLen = 0  # no echo canceller: the caller's phone has its own
        media.noVad = True
        ep.libInit(cfg)
        transport = pj.TransportConfig()
        transport.port = config.port
        if config.host not in ("0.0.0.0", "::"):
            transport.boundAddress = config.host
        ep.transportCreate(pj.PJSIP_TRANSPORT_UDP, transport)
        ep.transportCreate(pj.PJSIP_TRANSPORT_TCP, transport)
        if config.tls_cert and config.tls_key:
            tls = pj.TransportConfig()
            tls.port = config.tls_port or config.port + 1
            tls.boundAddress = transport.boundAddress
            tls.tlsConfig.certFile = config.tls_cert
            tls.tlsConfig.privKeyFile = config.tls_key
            ep.transportCreate(pj.PJSIP_TRANSPORT_TLS, tls)
        ep.audDevManager().setNullDev()  # no sound card: the null device clocks the bridge
        for codec in ep.codecEnum2():
            ep.codecSetPriority(codec.codecId, 0)
        for priority, codec in enumerate(CODECS):
            ep.codecSetPriority(codec, 255 - priority)
        ep.libStart()
        account = pj.AccountConfig()
        account.idUri = f"sip:parley@{_uri_host(config.host)}:{config.port}"
        if config.host not in ("0.0.0.0", "::"):
            account.mediaConfig.transportConfig.boundAddress = config.host
        self._Call, self._Port = _call_class(pj), port_class(pj)
        self._account = _account_class(pj)(self)
        self._account.create(account, True)
        log.info("sip: listening on %s:%d (UDP, TCP)", config.host, config.port)

    def _teardown(self) -> None:
        for line in list(self._lines.values()):
            line.drop()
        self._account = None
        gc.collect()  # every pjsua2 object must be gone before libDestroy
        ep = getattr(self, "_ep", None)
        if ep is not None:
            with contextlib.suppress(Exception):
                ep.libDestroy()
            self._ep = None

    def _incoming(self, prm: Any) -> None:
        pj = self.pj
        incoming = incoming_of(prm.rdata.wholeMsg, prm.rdata.srcAddress)
        loop = self._loop
        assert loop is not None
        ended: asyncio.Future[str] = loop.create_future()  # only resolved on the loop
        reply = SipReply(post=self.post)
        call = SipCall(self, prm.callId, incoming, reply, ended)
        line = _Line(self, self._Call(self, prm.callId), call)
        self._lines[prm.callId] = line
        ringing = pj.CallOpParam()
        ringing.statusCode = 180
        line.pj_call.answer(ringing)
        self.post(self._arrived, call)

    def _arrived(self, call: SipCall) -> None:
        if call.ended.done():
            return
        self.calls[call.pj_id] = call
        call.ended.add_done_callback(lambda _: self.calls.pop(call.pj_id, None))
        self.on_call(call)

    def _line(self, pj_id: int) -> _Line:
        line = self._lines.get(pj_id)
        if line is None:
            raise SipError("the call has ended")
        return line

    def _answer(self, pj_id: int, status_code: int) -> None:
        line = self._line(pj_id)
        prm = self.pj.CallOpParam()
        prm.statusCode = status_code
        if status_code >= 300:
            line.why = f"rejected with {status_code}"
        line.pj_call.answer(prm)

    def _hangup(self, pj_id: int, status_code: int, reason: str) -> None:
        line = self._lines.get(pj_id)
        if line is not None:
            line.hangup(status_code, reason)

    def _refer(self, pj_id: int, target_uri: str) -> None:
        line = self._line(pj_id)
        line.target = target_uri
        line.pj_call.xfer(target_uri, self.pj.CallOpParam())


def _uri_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "localhost"
    return f"[{host}]" if ":" in host else host


class _Line:
    """One call on the signalling thread: its pjsua2 call, its media port, its RTP watch."""

    def __init__(self, agent: SipAgent, pj_call: Any, call: SipCall) -> None:
        self.agent = agent
        self.pj_call = pj_call
        self.call = call
        self.port: Any = None
        self.slot: Any = None  # the call's audio on the bridge, while connected
        self.why: str | None = None  # why it ends, when parley ends it
        self.target: str | None = None
        self.confirmed = False
        self.rx_packets = -1
        self.rx_at = time.monotonic()
        self.media_index = -1
        pj_call.line = self

    def connect(self, index: int) -> None:
        pj = self.agent.pj
        audio = self.pj_call.getAudioMedia(index)
        if self.port is None:
            self.port = self.agent._Port(self.agent, self.call)
            fmt = pj.MediaFormatAudio()
            fmt.init(pj.PJMEDIA_FORMAT_PCM, RATE, 1, 20000, 16)
            self.port.createPort(f"call{self.call.pj_id}", fmt)
        audio.startTransmit(self.port)
        self.port.startTransmit(audio)
        self.slot, self.media_index = audio, index
        self.rx_at = time.monotonic()

    def disconnect(self) -> None:
        if self.slot is not None and self.port is not None:
            with contextlib.suppress(Exception):  # the stream may be gone already
                self.slot.stopTransmit(self.port)
            with contextlib.suppress(Exception):
                self.port.stopTransmit(self.slot)
        self.slot = None

    def check_rtp(self, now: float, timeout_s: float) -> None:
        if self.slot is None or self.call.held:
            self.rx_at = now
            return
        try:
            packets = self.pj_call.getStreamStat(self.media_index).rtcp.rxStat.pkt
        except self.agent.pj.Error:
            return
        if packets != self.rx_packets:
            self.rx_packets, self.rx_at = packets, now
        elif now - self.rx_at > timeout_s:
            log.info("sip: call %d: no RTP for %g s", self.call.pj_id, timeout_s)
            self.hangup(408, f"no RTP for {timeout_s:g} s")

    def hangup(self, status_code: int, reason: str) -> None:
        self.why = self.why or reason
        prm = self.agent.pj.CallOpParam()
        prm.statusCode = status_code
        with contextlib.suppress(self.agent.pj.Error):  # already disconnecting
            self.pj_call.hangup(prm)

    def drop(self) -> None:
        """Disconnect and forget: the pjsua2 call object goes once its DISCONNECTED callback
        returns (pjsua2 allows that), while its call id is still its own; dropped later, its
        destructor would clear whichever new call took the id (or run after libDestroy)."""
        self.disconnect()
        self.agent._lines.pop(self.call.pj_id, None)
        if self.pj_call is not None:
            self.pj_call.line = None
        self.pj_call = self.port = self.slot = None


class _LogWriter:
    """PJSIP's log into ``parley.sip``."""

    def __new__(cls, pj: ModuleType) -> Any:
        class Writer(pj.LogWriter):  # type: ignore[name-defined,misc]
            @guard
            def write(self, entry: Any) -> None:
                level = entry.level
                text = entry.msg.rstrip()
                if "bind()" in text and "already in use" in text:
                    level = 5  # an RTP port taken: pjsua tries the next one
                # PJSIP's errors are about one call or message (a codec refused: 488), not
                # about parley's health: warnings.
                log.log(logging.WARNING if level <= 2 else logging.DEBUG, "pjsip: %s", text)

        return Writer()


def _account_class(pj: ModuleType) -> type:
    class Account(pj.Account):  # type: ignore[name-defined,misc]
        def __init__(self, agent: SipAgent) -> None:
            super().__init__()
            self.agent = agent

        @guard
        def onIncomingCall(self, prm: Any) -> None:
            self.agent._incoming(prm)

    return Account


def _call_class(pj: ModuleType) -> type:
    class Call(pj.Call):  # type: ignore[name-defined,misc]
        def __init__(self, agent: SipAgent, call_id: int) -> None:
            super().__init__(agent._account, call_id)
            self.agent = agent
            self.line: _Line | None = None

        @guard
        def onCallState(self, prm: Any) -> None:
            line = self.line
            info = self.getInfo()
            if line is None or info.state != pj.PJSIP_INV_STATE_DISCONNECTED:
                if line is not None and info.state == pj.PJSIP_INV_STATE_CONFIRMED:
                    line.confirmed = True
                return
            call = line.call
            if line.why is not None:
                why = line.why
            elif not line.confirmed:
                why = f"the caller cancelled ({info.lastStatusCode} {info.lastReason})"
            else:
                why = "the caller hung up"
            log.info("sip: call %d ended: %s", call.pj_id, why)
            line.drop()
            self.agent.post(call._end, why)

        @guard
        def onCallMediaState(self, prm: Any) -> None:
            line = self.line
            if line is None:
                return
            info = self.getInfo()
            audio = [m for m in info.media if m.type == pj.PJMEDIA_TYPE_AUDIO]
            active = bool(audio) and audio[0].status == pj.PJSUA_CALL_MEDIA_ACTIVE
            if active:
                line.connect(audio[0].index)
            else:
                line.disconnect()
            held = not active
            if held != line.call.held:
                line.call.held = held  # read by check_rtp; the loop hears it below
                log.info("sip: call %d %s", line.call.pj_id, "on hold" if held else "resumed")
                if line.call.on_hold is not None:
                    self.agent.post(line.call.on_hold, held)

        @guard
        def onDtmfDigit(self, prm: Any) -> None:  # the media thread
            line = self.line
            if line is not None and line.call.on_dtmf is not None:
                self.agent.post(line.call.on_dtmf, str(prm.digit))

        @guard
        def onCallTransferStatus(self, prm: Any) -> None:
            line = self.line
            if line is None:
                return
            code, reason, final = int(prm.statusCode), str(prm.reason), bool(prm.finalNotify)
            if code >= 300:
                final = True
            if line.call.on_transfer is not None:
                self.agent.post(line.call.on_transfer, code, reason, final)
            if final:
                prm.cont = False
                if 200 <= code < 300:  # the caller is with the target now
                    line.hangup(603, f"transferred to {line.target}")

    return Call
