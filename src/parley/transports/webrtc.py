"""A Realtime session over WebRTC (aiortc): Opus audio both ways, events on ``oai-events``.

As OpenAI's WebRTC door does: the caller offers one audio track and a data channel named
``oai-events``; parley answers, takes the caller's audio from RTP as the session's input (no
``input_audio_buffer.append``), sends reply audio as RTP instead of ``response.output_audio.delta``
events, and tells the caller where playout stands with ``output_audio_buffer.started``,
``.stopped`` and ``.cleared``. Because parley paces the RTP itself, it knows how much of a reply
went out: a barge-in truncates the reply there (:meth:`ReplyTrack.played_ms`).

A call ends when the peer hangs up or vanishes: the data channel or the peer connection closes,
ICE or DTLS fails, or no RTP arrives for ``media_timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aioice.ice
import numpy as np
from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from parley.audio.frames import Frame
from parley.audio.resample import StreamResampler
from parley.transports.wire import WireClosed

__all__ = [
    "EVENTS_CHANNEL",
    "DataChannelWire",
    "OfferError",
    "ReplyTrack",
    "RtcPeer",
    "restrict_host_addresses",
]

log = logging.getLogger("parley.webrtc")

EVENTS_CHANNEL = "oai-events"
RATE = 48000  # Opus's clock
PTIME_S = 0.02
SAMPLES = int(RATE * PTIME_S)  # one 20 ms packet
MAX_CHANNEL_BYTES = 4 * 1024 * 1024  # client events waiting for the session; beyond: the call ends
OPEN_WAIT_S = 30.0  # how long events wait for the caller to open its data channel

Emit = Callable[[dict[str, Any]], None]


class OfferError(ValueError):
    """The SDP offer cannot be answered (the message says why)."""


def restrict_host_addresses(addresses: Sequence[str]) -> None:
    """Offer only ``addresses`` as host candidates (empty: aioice's own choice, every
    interface but 127.0.0.1).

    aioice has no option for this: it asks ``ifaddr`` for every interface in
    ``get_host_addresses``, which is replaced here for the whole process. ``["127.0.0.1"]``
    keeps WebRTC on loopback (tests, a browser on the same machine)."""
    if not hasattr(aioice.ice, "_parley_all_addresses"):
        aioice.ice._parley_all_addresses = aioice.ice.get_host_addresses  # type: ignore[attr-defined]
    every: Callable[[bool, bool], list[str]] = aioice.ice._parley_all_addresses  # type: ignore[attr-defined]
    chosen = list(addresses)

    def host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if not chosen:
            return every(use_ipv4, use_ipv6)
        return [a for a in chosen if (":" in a and use_ipv6) or (":" not in a and use_ipv4)]

    aioice.ice.get_host_addresses = host_addresses


def _set_jitter_prefetch(receiver: Any, packets: int) -> None:
    """Let the caller's audio through once ``packets`` packets are buffered.

    aiortc holds 4 audio packets (80 ms) before it decodes the first, and has no setting for
    it; every millisecond of that delays the end of the caller's turn. Its jitter buffer is
    private, so this reaches in, and leaves aiortc's default where the attribute moved."""
    buffer = getattr(receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if buffer is None or not isinstance(getattr(buffer, "_prefetch", None), int):
        log.warning("webrtc: aiortc's jitter buffer is not where parley looks; 80 ms it is")
        return
    buffer._prefetch = packets


class ReplyTrack(MediaStreamTrack):
    """The reply audio as an RTP source: 20 ms frames at 48 kHz, in real time, silence between
    replies. Playout events go to ``emit``."""

    kind = "audio"

    def __init__(self, emit: Emit) -> None:
        super().__init__()
        self._emit = emit
        self._queue: deque[tuple[str, np.ndarray]] = deque()  # (response id, 48 kHz samples)
        self._resamplers: dict[str, StreamResampler] = {}
        self._finished: set[str] = set()
        self._sent: dict[str, int] = {}  # response id -> samples sent (recent responses)
        self._playing: str | None = None
        self._start = 0.0
        self._timestamp: int | None = None
        self._pending = np.zeros(0, np.int16)
        self._pending_id: str | None = None

    # --- Media (the connection's side) --------------------------------------------------------

    def play(self, response_id: str, frame: Frame) -> None:
        resampler = self._resamplers.get(response_id)
        if resampler is None or resampler.in_rate != frame.sample_rate:
            resampler = self._resamplers[response_id] = StreamResampler(frame.sample_rate, RATE)
        samples = resampler.process(frame.samples)
        if len(samples):
            self._queue.append((response_id, samples))
        self._sent.setdefault(response_id, 0)
        while len(self._sent) > 16:  # truncation may ask about recent replies only
            del self._sent[next(iter(self._sent))]

    def finish(self, response_id: str) -> None:
        resampler = self._resamplers.pop(response_id, None)
        if resampler is not None and len(tail := resampler.flush()):
            self._queue.append((response_id, tail))
        self._finished.add(response_id)
        if response_id == self._playing and not self._queued(response_id):
            self._stopped(response_id)

    def clear(self, response_id: str) -> None:
        had = self._queued(response_id) or self._playing == response_id
        self._queue = deque(c for c in self._queue if c[0] != response_id)
        if self._pending_id == response_id:
            self._pending, self._pending_id = np.zeros(0, np.int16), None
        self._resamplers.pop(response_id, None)
        self._finished.discard(response_id)
        if self._playing == response_id:
            self._playing = None
        if had:
            self._emit({"type": "output_audio_buffer.cleared", "response_id": response_id})

    def played_ms(self, response_id: str) -> float | None:
        sent = self._sent.get(response_id)
        return None if sent is None else 1000.0 * sent / RATE

    def _queued(self, response_id: str) -> bool:
        return self._pending_id == response_id or any(c[0] == response_id for c in self._queue)

    def _stopped(self, response_id: str) -> None:
        self._playing = None
        self._finished.discard(response_id)
        self._emit({"type": "output_audio_buffer.stopped", "response_id": response_id})

    # --- the RTP sender's side ----------------------------------------------------------------

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._timestamp is None:
            self._start, self._timestamp = time.monotonic(), 0
        else:
            self._timestamp += SAMPLES
            wait = self._start + self._timestamp / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            elif wait < -0.5:  # the loop stalled: start the clock again rather than burst
                self._start, self._timestamp = time.monotonic(), 0
        samples = self._next()
        frame = AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, RATE)
        return frame

    def _next(self) -> np.ndarray:
        """The next 20 ms: the front reply's audio, padded with silence."""
        out = np.zeros(SAMPLES, np.int16)
        filled = 0
        while filled < SAMPLES:
            if not len(self._pending):
                if not self._queue:
                    break
                self._pending_id, self._pending = self._queue.popleft()
            rid = self._pending_id
            assert rid is not None
            if self._playing != rid:
                if self._playing is not None:  # the previous reply is over
                    self._stopped(self._playing)
                self._playing = rid
                self._emit({"type": "output_audio_buffer.started", "response_id": rid})
            n = min(SAMPLES - filled, len(self._pending))
            out[filled : filled + n] = self._pending[:n]
            self._pending = self._pending[n:]
            self._sent[rid] = self._sent.get(rid, 0) + n
            filled += n
            if not len(self._pending):
                self._pending_id = None
        playing = self._playing
        if playing is not None and playing in self._finished and not self._queued(playing):
            self._stopped(playing)
        return out


class DataChannelWire:
    """The ``oai-events`` data channel as the session's wire. Events sent before the caller
    opened its channel wait for it (up to :data:`OPEN_WAIT_S`)."""

    def __init__(self) -> None:
        self._channel: RTCDataChannel | None = None
        self._open = asyncio.Event()
        self._inbox: deque[str | bytes | None] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.closed = False

    def attach(self, channel: RTCDataChannel) -> None:
        if self._channel is not None:
            return  # one events channel per call; others are ignored
        self._channel = channel

        @channel.on("message")
        def on_message(message: str | bytes) -> None:
            self._bytes += len(message)
            if self._bytes > MAX_CHANNEL_BYTES:
                log.warning("webrtc: the caller sent more events than the session can take")
                self.end()
                return
            self._inbox.append(message)
            self._ready.set()

        @channel.on("close")
        def on_close() -> None:
            self.end()

        if channel.readyState == "open":
            self._open.set()
        else:
            channel.on("open", self._open.set)

    def end(self) -> None:
        """The call is over: the session's reader gets None."""
        if not self.closed:
            self.closed = True
            self._inbox.append(None)
            self._ready.set()
            self._open.set()

    async def receive(self) -> str | bytes | None:
        while not self._inbox:
            self._ready.clear()
            await self._ready.wait()
        message = self._inbox.popleft()
        if message is None:
            self._inbox.append(None)  # every later read sees the end too
        else:
            self._bytes -= len(message)
        return message

    async def send(self, text: str) -> None:
        if not self._open.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(OPEN_WAIT_S):
                    await self._open.wait()
        channel = self._channel
        if self.closed or channel is None or channel.readyState != "open":
            raise WireClosed
        try:
            channel.send(text)
        except Exception as exc:  # aiortc raises InvalidStateError once the channel closed
            raise WireClosed from exc

    async def close(self, code: int, reason: str) -> None:
        self.end()
        if self._channel is not None:
            self._channel.close()


class RtcPeer:
    """One WebRTC call's peer connection: the answer, the caller's audio in, the reply out."""

    def __init__(
        self,
        *,
        ice_servers: Sequence[dict[str, Any]] = (),
        media_timeout_s: float = 15.0,
        jitter_packets: int = 2,
    ) -> None:
        servers = [RTCIceServer(**server) for server in ice_servers]
        self.jitter_packets = jitter_packets
        # iceServers given explicitly, even empty: aiortc otherwise asks a public STUN server.
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        self.wire = DataChannelWire()
        self.reply = ReplyTrack(self._event)
        self.events: list[dict[str, Any]] = []
        self._emit: Emit | None = None
        self._remote: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self.media_timeout_s = media_timeout_s
        self.last_media = time.monotonic()
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        @self.pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_CHANNEL:
                self.wire.attach(channel)

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio" and not self._remote.done():
                self._remote.set_result(track)

        @self.pc.on("connectionstatechange")
        def on_state() -> None:
            if self.pc.connectionState in ("failed", "closed"):
                self._end(f"connection {self.pc.connectionState}")

    def on_event(self, emit: Emit) -> None:
        """Where playout events go from now on (those raised before are replayed)."""
        self._emit = emit
        for event in self.events:
            emit(event)
        self.events.clear()

    def _event(self, event: dict[str, Any]) -> None:
        if self._emit is None:
            self.events.append(event)
        else:
            self._emit(event)

    def _end(self, why: str) -> None:
        if not self.ended.done():
            self.ended.set_result(why)
        self.wire.end()

    async def answer(self, offer_sdp: str) -> str:
        """The SDP answer to the caller's offer (which must offer audio with Opus)."""
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(offer_sdp, "offer"))
        except Exception as exc:  # aiortc raises ValueError and others for a bad offer
            raise OfferError(f"the SDP offer cannot be used: {exc}") from exc
        audio = [t for t in self.pc.getTransceivers() if t.kind == "audio"]
        if not audio:
            raise OfferError("the SDP offer has no audio section (m=audio)")
        opus = [
            c
            for c in RTCRtpSender.getCapabilities("audio").codecs
            if c.mimeType.lower() == "audio/opus"
        ]
        transceiver = audio[0]
        _set_jitter_prefetch(transceiver.receiver, self.jitter_packets)
        transceiver.setCodecPreferences(opus)
        transceiver.sender.replaceTrack(self.reply)
        if transceiver.direction in ("recvonly", "inactive"):
            transceiver.direction = "sendrecv"
        try:
            answer = await self.pc.createAnswer()
            await self.pc.setLocalDescription(answer)
        except Exception as exc:
            raise OfferError(f"the SDP offer cannot be answered: {exc}") from exc
        return str(self.pc.localDescription.sdp)

    async def inbound(
        self, push: Callable[[Frame], Awaitable[None]], rate: Callable[[], int]
    ) -> None:
        """Feed the caller's audio to ``push`` as mono frames at ``rate()`` Hz until the call
        ends; end it when no audio arrives for ``media_timeout_s``."""
        try:
            async with asyncio.timeout(self.media_timeout_s):
                track = await asyncio.shield(self._remote)
        except TimeoutError:
            self._end("no audio track")
            return
        resampler: StreamResampler | None = None
        while True:
            try:
                async with asyncio.timeout(self.media_timeout_s):
                    frame = await track.recv()
            except TimeoutError:
                self._end(f"no audio for {self.media_timeout_s:g} s")
                return
            except MediaStreamError:
                self._end("the caller's audio ended")
                return
            self.last_media = time.monotonic()
            if not isinstance(frame, AudioFrame):
                continue
            pcm = frame.to_ndarray()
            channels = len(frame.layout.channels)
            mono = pcm.reshape(-1, channels)[:, 0] if channels > 1 else pcm.reshape(-1)
            out_rate = rate()
            if (
                resampler is None
                or resampler.in_rate != frame.sample_rate
                or resampler.out_rate != out_rate
            ):
                resampler = StreamResampler(frame.sample_rate, out_rate)
            samples = resampler.process(np.ascontiguousarray(mono, dtype=np.int16))
            if len(samples):
                await push(Frame(samples, out_rate))

    async def close(self) -> None:
        self._end("closed")
        self.reply.stop()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(5):
                await self.pc.close()
