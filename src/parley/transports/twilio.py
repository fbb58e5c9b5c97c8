"""Twilio Media Streams (bidirectional, ``<Connect><Stream>``): the WebSocket's messages, and
:class:`TwilioPlayer`, the call's reply audio as Twilio ``media`` with ``mark``s.

Twilio sends ``connected``, ``start`` (``streamSid``, ``callSid``, ``customParameters``,
``mediaFormat``: ``audio/x-mulaw`` 8000 Hz mono), ``media`` (base64 mu-law, 20 ms each),
``dtmf``, ``mark`` (one of ours, echoed once Twilio has played the audio before it) and
``stop``. The server sends ``media`` (mu-law 8 kHz, any length), ``mark`` and ``clear``
(Twilio drops what it has buffered, and echoes every mark still pending at once).

Twilio buffers what it is sent and plays it in real time, so the server sends reply audio as
it comes, and learns what the caller heard from the marks coming back: a mark after each
reply chunk, at least every :data:`MARK_MS` of audio. Between two marks the caller is assumed
to be hearing the audio in real time from the earlier one, never past the later one. Marks
echoed after a ``clear`` were never played: they are ignored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from parley.audio.frames import Frame
from parley.audio.g711 import ulaw_decode, ulaw_encode
from parley.audio.resample import StreamResampler
from parley.transports.wire import WireClosed

__all__ = [
    "MAX_MESSAGE_BYTES",
    "RATE",
    "Connected",
    "Dtmf",
    "Mark",
    "Media",
    "Start",
    "Stop",
    "TwilioMessage",
    "TwilioPlayer",
    "TwilioProtocolError",
    "decode_audio",
    "parse",
]

log = logging.getLogger("parley.twilio")

RATE = 8000  # G.711's clock: Twilio streams mu-law at 8 kHz, both ways
ENCODING = "audio/x-mulaw"
MEDIA_MS = 200  # at most this much reply audio per outbound media message
MARK_MS = 100  # a mark once this much audio went out unmarked, and at the end of each chunk
MAX_MESSAGE_BYTES = 64 * 1024  # a Twilio message is a few hundred bytes
MAX_QUEUED_BYTES = 4 * 1024 * 1024  # messages not yet taken by the socket: ~4 min of audio
RECENT_REPLIES = 16  # replies whose playout a truncation may still ask about

Emit = Callable[[dict[str, Any]], None]


class TwilioProtocolError(ValueError):
    """A message that is not what Twilio sends (the text says why)."""


# --- what Twilio sends ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Connected:
    protocol: str
    version: str


@dataclass(frozen=True, slots=True)
class Start:
    stream_sid: str
    call_sid: str
    account_sid: str
    tracks: tuple[str, ...]
    parameters: dict[str, str]
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True, slots=True)
class Media:
    stream_sid: str
    track: str
    payload: bytes  # mu-law codes


@dataclass(frozen=True, slots=True)
class Mark:
    stream_sid: str
    name: str


@dataclass(frozen=True, slots=True)
class Dtmf:
    stream_sid: str
    digit: str


@dataclass(frozen=True, slots=True)
class Stop:
    stream_sid: str


TwilioMessage = Connected | Start | Media | Mark | Dtmf | Stop


def _object(message: dict[str, Any], name: str) -> dict[str, Any]:
    value = message.get(name)
    if not isinstance(value, dict):
        raise TwilioProtocolError(f"a {message.get('event')} message without its '{name}' object")
    return value


def _text(container: dict[str, Any], name: str, default: str | None = None) -> str:
    value = container.get(name, default)
    if not isinstance(value, str):
        raise TwilioProtocolError(f"'{name}' must be a string")
    return value


def parse(raw: str | bytes) -> TwilioMessage | None:
    """One message from Twilio; None for an event parley has no use for. Raises
    :class:`TwilioProtocolError` for anything malformed."""
    if len(raw) > MAX_MESSAGE_BYTES:
        raise TwilioProtocolError(f"a message of {len(raw)} bytes")
    try:
        message = json.loads(raw)
    except ValueError:
        raise TwilioProtocolError("a message that is not JSON") from None
    if not isinstance(message, dict):
        raise TwilioProtocolError("a message that is not a JSON object")
    event = message.get("event")
    sid = message.get("streamSid", "")
    sid = sid if isinstance(sid, str) else ""
    match event:
        case "connected":
            return Connected(_text(message, "protocol", ""), _text(message, "version", ""))
        case "start":
            start = _object(message, "start")
            fmt = start.get("mediaFormat") or {}
            params = start.get("customParameters") or {}
            tracks = start.get("tracks") or []
            if not isinstance(fmt, dict) or not isinstance(params, dict):
                raise TwilioProtocolError("start: mediaFormat and customParameters are objects")
            try:
                rate, channels = int(fmt.get("sampleRate", RATE)), int(fmt.get("channels", 1))
            except (TypeError, ValueError):
                raise TwilioProtocolError("start: a sample rate or channels not a number") from None
            return Start(
                stream_sid=_text(start, "streamSid", sid) or sid,
                call_sid=_text(start, "callSid"),
                account_sid=_text(start, "accountSid", ""),
                tracks=tuple(str(t) for t in tracks) if isinstance(tracks, list) else (),
                parameters={str(k): str(v) for k, v in params.items()},
                encoding=str(fmt.get("encoding", ENCODING)),
                sample_rate=rate,
                channels=channels,
            )
        case "media":
            media = _object(message, "media")
            try:
                payload = base64.b64decode(_text(media, "payload"), validate=True)
            except binascii.Error:
                raise TwilioProtocolError("media: the payload is not base64") from None
            return Media(sid, _text(media, "track", "inbound"), payload)
        case "mark":
            return Mark(sid, _text(_object(message, "mark"), "name"))
        case "dtmf":
            digit = _text(_object(message, "dtmf"), "digit")
            if len(digit) != 1 or digit not in "0123456789*#ABCD":
                raise TwilioProtocolError(f"dtmf: {digit!r} is not a keypad digit")
            return Dtmf(sid, digit)
        case "stop":
            return Stop(sid)
    return None


def decode_audio(payload: bytes) -> Frame:
    """A ``media`` payload (mu-law) as 8 kHz samples."""
    return Frame(ulaw_decode(payload), RATE)


# --- what the server sends --------------------------------------------------------------------


def media_message(stream_sid: str, codes: bytes) -> str:
    payload = base64.b64encode(codes).decode("ascii")
    return json.dumps({"event": "media", "streamSid": stream_sid, "media": {"payload": payload}})


def mark_message(stream_sid: str, name: str) -> str:
    return json.dumps({"event": "mark", "streamSid": stream_sid, "mark": {"name": name}})


def clear_message(stream_sid: str) -> str:
    return json.dumps({"event": "clear", "streamSid": stream_sid})


@dataclass(eq=False)
class _Mark:
    """A stretch of one reply's audio that ends in a mark."""

    name: str
    response_id: str
    end_ms: float | None = None  # where the reply stands at the mark; None while still open
    sent_at: float | None = None  # when its first audio went to Twilio
    posted: bool = False  # the mark itself went to Twilio


@dataclass(eq=False)
class _Reply:
    queued_ms: float = 0.0  # audio handed to the socket's queue
    unmarked_ms: float = 0.0  # of it, since the last mark
    heard_ms: float = 0.0  # up to the last mark Twilio echoed
    heard_at: float = 0.0
    open: _Mark | None = None  # the stretch still taking audio
    marks: deque[_Mark] = field(default_factory=deque)  # closed, not yet echoed, oldest first
    resampler: StreamResampler | None = None
    started: bool = False  # output_audio_buffer.started said
    finished: bool = False  # no more audio will come
    cleared: bool = False


@dataclass(eq=False, slots=True)
class _Out:
    text: str
    response_id: str | None = None
    stretch: _Mark | None = None  # the stretch a media message belongs to, or a mark closes
    is_mark: bool = False


class TwilioPlayer:
    """The call's reply audio (a :class:`parley.transports.wire.Media`) as Twilio messages on
    one stream, with playout read back from the echoed marks; playout events go to ``emit``
    (``output_audio_buffer.started``, ``.stopped`` once Twilio played a reply to its end,
    ``.cleared``). ``run`` sends the messages; ``on_overflow`` is called if the socket stops
    taking them (more than :data:`MAX_QUEUED_BYTES` waiting)."""

    def __init__(
        self,
        stream_sid: str,
        *,
        emit: Emit | None = None,
        on_overflow: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream_sid = stream_sid
        self.emit = emit
        self.on_overflow = on_overflow
        self._clock = clock
        self._replies: dict[str, _Reply] = {}
        self._marks: dict[str, _Mark] = {}  # name -> stretch: closed, not yet echoed
        self._queue: deque[_Out] = deque()
        self._queued_bytes = 0
        self._ready = asyncio.Event()
        self._count = 0
        self.overflowed = False
        self.sent_messages = 0

    # --- Media (the connection's side) --------------------------------------------------------

    def play(self, response_id: str, frame: Frame) -> None:
        reply = self._reply(response_id)
        if reply.cleared or reply.finished:
            return
        if frame.sample_rate != RATE:
            if reply.resampler is None or reply.resampler.in_rate != frame.sample_rate:
                reply.resampler = StreamResampler(frame.sample_rate, RATE)
            samples = reply.resampler.process(frame.samples)
        else:
            samples = frame.samples
        self._queue_audio(response_id, reply, samples)
        self._close_mark(reply)  # a mark after each reply chunk

    def finish(self, response_id: str) -> None:
        reply = self._replies.get(response_id)
        if reply is None or reply.cleared or reply.finished:
            return
        if reply.resampler is not None:
            self._queue_audio(response_id, reply, reply.resampler.flush())
            reply.resampler = None
        self._close_mark(reply, force=True)
        reply.finished = True
        self._maybe_stopped(response_id, reply)

    def clear(self, response_id: str) -> None:
        reply = self._replies.get(response_id)
        if reply is None or reply.cleared:
            return
        now = self._clock()
        reply.heard_ms = self._estimate(reply, now)
        playing = any(m.sent_at is not None for m in (*reply.marks, reply.open) if m is not None)
        reply.cleared, reply.resampler, reply.open = True, None, None
        reply.marks.clear()
        kept = deque(o for o in self._queue if o.response_id != response_id)
        self._queued_bytes = sum(len(o.text) for o in kept)
        self._queue = kept
        for name, mark in list(self._marks.items()):
            if mark.response_id == response_id:
                del self._marks[name]
        if not playing:
            return
        # Twilio drops all it has buffered and echoes every mark it was sent at once: none of
        # them was heard. Another reply buffered there too (rare) stops where it is.
        for name, mark in list(self._marks.items()):
            other = self._replies.get(mark.response_id)
            if mark.posted and other is not None:
                other.heard_ms, other.heard_at = self._estimate(other, now), now
                with contextlib.suppress(ValueError):
                    other.marks.remove(mark)
                del self._marks[name]
        self._queue.appendleft(_Out(clear_message(self.stream_sid)))
        self._queued_bytes += len(self._queue[0].text)
        self._ready.set()
        self._emit({"type": "output_audio_buffer.cleared", "response_id": response_id})

    def played_ms(self, response_id: str) -> float | None:
        reply = self._replies.get(response_id)
        return None if reply is None else self._estimate(reply, self._clock())

    # --- marks echoed by Twilio ---------------------------------------------------------------

    def on_mark(self, name: str) -> None:
        """Twilio played everything up to mark ``name`` (a mark it echoes after a ``clear`` is
        no longer known here: ignored)."""
        mark = self._marks.pop(name, None)
        if mark is None:
            return
        reply = self._replies.get(mark.response_id)
        if reply is None or mark.end_ms is None or mark not in reply.marks:
            return
        while reply.marks:  # marks come back in order; an earlier one lost is passed too
            earlier = reply.marks.popleft()
            self._marks.pop(earlier.name, None)
            if earlier is mark:
                break
        reply.heard_ms, reply.heard_at = mark.end_ms, self._clock()
        self._maybe_stopped(mark.response_id, reply)

    # --- the socket's side --------------------------------------------------------------------

    async def run(self, send: Callable[[str], Awaitable[None]]) -> None:
        """Send the queued messages in order until the socket is gone."""
        while True:
            while not self._queue:
                self._ready.clear()
                await self._ready.wait()
            out = self._queue.popleft()
            self._queued_bytes -= len(out.text)
            stretch = out.stretch
            if stretch is not None and out.is_mark:
                stretch.posted = True
            elif stretch is not None and stretch.sent_at is None:
                stretch.sent_at = self._clock()
                reply = self._replies.get(stretch.response_id)
                if reply is not None and not reply.started:
                    reply.started = True
                    self._emit(
                        {"type": "output_audio_buffer.started", "response_id": out.response_id}
                    )
            try:
                await send(out.text)
            except WireClosed:
                return
            self.sent_messages += 1

    # --- inside -------------------------------------------------------------------------------

    def _reply(self, response_id: str) -> _Reply:
        reply = self._replies.get(response_id)
        if reply is None:
            reply = self._replies[response_id] = _Reply(heard_at=self._clock())
            while len(self._replies) > RECENT_REPLIES:  # its marks are forgotten with it
                gone = self._replies.pop(next(iter(self._replies)))
                for mark in gone.marks:
                    self._marks.pop(mark.name, None)
        return reply

    def _queue_audio(self, response_id: str, reply: _Reply, samples: np.ndarray) -> None:
        step = RATE * MEDIA_MS // 1000
        for at in range(0, len(samples), step):
            piece = samples[at : at + step]
            if reply.open is None:
                self._count += 1
                reply.open = _Mark(f"{response_id}.{self._count}", response_id)
            ms = 1000.0 * len(piece) / RATE
            codes = ulaw_encode(piece).tobytes()
            self._put(_Out(media_message(self.stream_sid, codes), response_id, reply.open))
            reply.queued_ms += ms
            reply.unmarked_ms += ms
            if reply.unmarked_ms >= MARK_MS:
                self._close_mark(reply)

    def _close_mark(self, reply: _Reply, *, force: bool = False) -> None:
        mark = reply.open
        if mark is None or (not force and reply.unmarked_ms < MARK_MS / 2):
            return  # tiny chunks share a mark (still one at least every MARK_MS)
        mark.end_ms = reply.queued_ms
        reply.open, reply.unmarked_ms = None, 0.0
        reply.marks.append(mark)
        self._marks[mark.name] = mark
        self._put(_Out(mark_message(self.stream_sid, mark.name), mark.response_id, mark, True))

    def _put(self, out: _Out) -> None:
        if self.overflowed:
            return
        self._queue.append(out)
        self._queued_bytes += len(out.text)
        self._ready.set()
        if self._queued_bytes > MAX_QUEUED_BYTES:
            log.warning("twilio stream %s: the socket is not taking audio", self.stream_sid)
            self.overflowed = True
            self._queue.clear()
            self._queued_bytes = 0
            if self.on_overflow is not None:
                self.on_overflow()

    def _estimate(self, reply: _Reply, now: float) -> float:
        """What the caller has heard: the last mark echoed, and the time since, within the next
        stretch Twilio has been sent."""
        if reply.cleared:
            return reply.heard_ms
        ahead = reply.marks[0] if reply.marks else reply.open
        if ahead is None or ahead.sent_at is None:
            return reply.heard_ms
        end = ahead.end_ms if ahead.end_ms is not None else reply.queued_ms
        since = now - max(reply.heard_at, ahead.sent_at)
        return min(end, reply.heard_ms + 1000.0 * max(since, 0.0))

    def _maybe_stopped(self, response_id: str, reply: _Reply) -> None:
        if reply.finished and reply.started and not reply.marks and reply.open is None:
            reply.started = False  # said once
            self._emit({"type": "output_audio_buffer.stopped", "response_id": response_id})

    def _emit(self, event: dict[str, Any]) -> None:
        if self.emit is not None:
            self.emit(event)
