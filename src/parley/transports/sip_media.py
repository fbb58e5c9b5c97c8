"""The media side of a SIP call: the reply audio as PJSIP's media clock takes it
(:class:`SipReply`, a :class:`~parley.transports.wire.Media`), and the ``AudioMediaPort`` that
moves 20 ms frames between a call's RTP stream and asyncio (:func:`port_class`).

Both run on PJSIP's media clock thread (the conference bridge, clocked by its null sound
device), so :class:`SipReply` locks what the event loop and the clock share, and the port
only copies frames and posts them to the loop.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections import deque
from collections.abc import Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from parley.audio.frames import Frame
from parley.audio.resample import StreamResampler

if TYPE_CHECKING:
    from parley.transports.sip import SipAgent, SipCall

__all__ = ["FRAME", "RATE", "SipReply", "guard", "port_class", "vector_reader"]

log = logging.getLogger("parley.sip")

RATE = 8000  # G.711's clock
FRAME = 160  # 20 ms

Emit = Callable[[dict[str, Any]], None]


class SipReply:
    """The session's reply audio (a :class:`~parley.transports.wire.Media`) as the call's RTP
    takes it, 20 ms at a time on PJSIP's media clock; silence between replies. Playout events
    (``output_audio_buffer.started`` / ``.stopped`` / ``.cleared``) go to :attr:`emit` on the
    event loop. While a call is on hold nothing is taken, so nothing counts as heard."""

    def __init__(self, post: Callable[..., None] | None = None) -> None:
        self.emit: Emit | None = None
        self._post = post  # runs a callable on the event loop (from the media clock's thread)
        self._lock = threading.Lock()
        self._queue: deque[tuple[str, np.ndarray]] = deque()
        self._resamplers: dict[str, StreamResampler] = {}
        self._finished: set[str] = set()
        self._sent: dict[str, int] = {}  # response id -> samples sent (recent responses)
        self._playing: str | None = None
        self.ended = False

    def play(self, response_id: str, frame: Frame) -> None:
        with self._lock:
            if self.ended:
                return
            resampler = self._resamplers.get(response_id)
            if resampler is None or resampler.in_rate != frame.sample_rate:
                resampler = StreamResampler(frame.sample_rate, RATE)
                self._resamplers[response_id] = resampler
            samples = resampler.process(frame.samples)
            if len(samples):
                self._queue.append((response_id, samples))
            self._sent.setdefault(response_id, 0)
            while len(self._sent) > 16:  # truncation asks about recent replies only
                del self._sent[next(iter(self._sent))]

    def finish(self, response_id: str) -> None:
        with self._lock:
            resampler = self._resamplers.pop(response_id, None)
            if resampler is not None and len(tail := resampler.flush()):
                self._queue.append((response_id, tail))
            self._finished.add(response_id)
            stopped = response_id == self._playing and not self._queued(response_id)
            if stopped:
                self._playing = None
                self._finished.discard(response_id)
        if stopped:
            self._event("output_audio_buffer.stopped", response_id)

    def clear(self, response_id: str) -> None:
        with self._lock:
            had = self._queued(response_id) or self._playing == response_id
            self._queue = deque(c for c in self._queue if c[0] != response_id)
            self._resamplers.pop(response_id, None)
            self._finished.discard(response_id)
            if self._playing == response_id:
                self._playing = None
        if had:
            self._event("output_audio_buffer.cleared", response_id)

    def played_ms(self, response_id: str) -> float | None:
        with self._lock:
            sent = self._sent.get(response_id)
        return None if sent is None else 1000.0 * sent / RATE

    def end(self) -> None:
        with self._lock:
            self.ended = True
            self._queue.clear()

    def _queued(self, response_id: str) -> bool:
        return any(c[0] == response_id for c in self._queue)

    def _event(self, kind: str, response_id: str) -> None:
        if self.emit is not None:
            self.emit({"type": kind, "response_id": response_id})

    def _posted(self, kind: str, response_id: str) -> None:
        if self._post is not None:
            self._post(self._event, kind, response_id)

    def pull(self) -> np.ndarray:
        """The next 20 ms for the RTP sender (the media clock's thread)."""
        out = np.zeros(FRAME, np.int16)
        events: list[tuple[str, str]] = []
        with self._lock:
            filled = 0
            while filled < FRAME and self._queue:
                rid, samples = self._queue[0]
                if self._playing != rid:
                    if self._playing is not None:  # the previous reply is over
                        events.append(("output_audio_buffer.stopped", self._playing))
                        self._finished.discard(self._playing)
                    self._playing = rid
                    events.append(("output_audio_buffer.started", rid))
                n = min(FRAME - filled, len(samples))
                out[filled : filled + n] = samples[:n]
                if n == len(samples):
                    self._queue.popleft()
                else:
                    self._queue[0] = (rid, samples[n:])
                self._sent[rid] = self._sent.get(rid, 0) + n
                filled += n
            playing = self._playing
            if playing is not None and playing in self._finished and not self._queued(playing):
                self._playing = None
                self._finished.discard(playing)
                events.append(("output_audio_buffer.stopped", playing))
        for kind, rid in events:
            self._posted(kind, rid)
        return out


def vector_reader(pj: ModuleType) -> Callable[[Any], bytes]:
    """Bytes of a pjsua2 ``ByteVector``. SWIG iterates one element per call (about 250 us a
    frame); libstdc++'s std::vector is three pointers (begin, end, capacity), read directly
    once a known vector checks out, else the slow way."""
    probe = bytes(range(256)) * 2

    def slow(vector: Any) -> bytes:
        return bytes(vector)

    def fast(vector: Any) -> bytes:
        address = int(vector.this)
        begin = ctypes.c_void_p.from_address(address).value or 0
        end = ctypes.c_void_p.from_address(address + ctypes.sizeof(ctypes.c_void_p)).value or 0
        return ctypes.string_at(begin, end - begin) if end > begin else b""

    try:
        frame = pj.MediaFrame()
        frame.buf = pj.ByteVector(probe)
        if fast(frame.buf) == probe and fast(pj.ByteVector(b"")) == b"":
            return fast
    except Exception:  # any surprise: the slow way is always right
        pass
    return slow


def guard(method: Callable[..., None]) -> Callable[..., None]:
    """A pjsua2 callback that logs, never raises, whatever goes wrong."""

    def guarded(self: Any, *args: Any) -> None:
        try:
            method(self, *args)
        except BaseException:
            log.exception("sip: %s failed", method.__name__)

    guarded.__name__ = method.__name__
    return guarded


def port_class(pj: ModuleType) -> type:
    audio_type = pj.PJMEDIA_FRAME_TYPE_AUDIO

    class Port(pj.AudioMediaPort):  # type: ignore[name-defined,misc]
        """The call's audio on the conference bridge (called on the media clock's thread)."""

        def __init__(self, agent: SipAgent, call: SipCall) -> None:
            super().__init__()
            self.agent = agent
            self.call = call
            self.read = agent._read

        @guard
        def onFrameReceived(self, frame: Any) -> None:
            if frame.type != audio_type or not frame.size:
                return
            samples = np.frombuffer(self.read(frame.buf), "<i2").astype(np.int16)
            self.agent.post(self.call._audio, Frame(samples, RATE))

        @guard
        def onFrameRequested(self, frame: Any) -> None:
            data = self.call.reply.pull().astype("<i2").tobytes()
            frame.buf = pj.ByteVector(data)
            frame.size = len(data)
            frame.type = audio_type

    return Port
