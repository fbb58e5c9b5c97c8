"""A WebRTC caller for tests: aiortc with a real recording as its microphone, the ``oai-events``
data channel, and a recorder of the reply audio it hears. Loopback only: host candidates are
limited to 127.0.0.1 (the server under test is started with the same)."""

from __future__ import annotations

import asyncio
import fractions
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame

from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.transports.webrtc import restrict_host_addresses

RATE = 48000
SAMPLES = 960  # 20 ms


class ScriptedMicrophone(MediaStreamTrack):
    """Plays queued speech in real time, silence otherwise; remembers when each piece's last
    sample went out."""

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._queue: list[list[Any]] = []  # [samples, speech samples left]
        self._start: float | None = None
        self._timestamp = 0
        self.last_speech_sent: float | None = None  # time.monotonic() of a piece's last sample

    def say(self, frame: Frame, *, then_silence_s: float = 0.0) -> None:
        pcm = resample(frame, RATE).samples
        silence = np.zeros(int(then_silence_s * RATE), np.int16)
        self._queue.append([np.concatenate([pcm, silence]), len(pcm)])

    async def recv(self) -> AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        else:
            self._timestamp += SAMPLES
            wait = self._start + self._timestamp / RATE - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        out = np.zeros(SAMPLES, np.int16)
        if self._queue:
            piece, speech_left = self._queue[0]
            n = min(SAMPLES, len(piece))
            out[:n] = piece[:n]
            if 0 < speech_left <= n:  # this packet carries the piece's last speech sample
                self.last_speech_sent = time.monotonic()
            self._queue[0] = [piece[n:], max(speech_left - n, 0)]
            if len(piece) == n:
                self._queue.pop(0)
        frame = AudioFrame.from_ndarray(out.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, RATE)
        return frame


@dataclass
class Heard:
    """Reply audio received: (arrival time, 48 kHz mono samples) per packet."""

    packets: list[tuple[float, np.ndarray]] = field(default_factory=list)

    def first_voiced_after(self, t: float, threshold: float = 300.0) -> float | None:
        for at, pcm in self.packets:
            if at >= t and np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > threshold:
                return at
        return None

    def audio(self, since: float = 0.0) -> Frame:
        parts = [pcm for at, pcm in self.packets if at >= since]
        return Frame(np.concatenate(parts) if parts else np.zeros(0, np.int16), RATE)


class RtcCaller:
    """One WebRTC call to a parley server."""

    def __init__(self, base_url: str, *, key: str | None = None) -> None:
        restrict_host_addresses(["127.0.0.1"])
        self.base_url = base_url.rstrip("/")
        self.key = key
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.mic = ScriptedMicrophone()
        self.pc.addTrack(self.mic)
        self.channel = self.pc.createDataChannel("oai-events")
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._arrived = asyncio.Event()
        self.heard = Heard()
        self.call_id: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.opened = asyncio.Event()
        self.channel.on("open", self.opened.set)

        @self.channel.on("message")
        def on_message(message: str) -> None:
            self.events.append((time.monotonic(), json.loads(message)))
            self._arrived.set()

        @self.pc.on("track")
        def on_track(track: MediaStreamTrack) -> None:
            self._tasks.append(asyncio.ensure_future(self._record(track)))

    async def _record(self, track: MediaStreamTrack) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            assert isinstance(frame, AudioFrame)
            pcm = frame.to_ndarray().reshape(-1, len(frame.layout.channels))[:, 0]
            self.heard.packets.append((time.monotonic(), pcm.astype(np.int16)))

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return str(self.pc.localDescription.sdp)

    async def connect(
        self, session: dict[str, Any] | None = None, *, query: str = "?parley_timeline=1"
    ) -> httpx.Response:
        """Offer, post it as the SDK does (multipart), apply the answer."""
        sdp = await self.offer()
        files: dict[str, Any] = {"sdp": (None, sdp, "application/sdp")}
        if session is not None:
            files["session"] = (None, json.dumps(session), "application/json")
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        async with httpx.AsyncClient(timeout=30) as http:
            answer = await http.post(
                f"{self.base_url}/realtime/calls{query}", files=files, headers=headers
            )
        if answer.status_code == 201:
            self.call_id = answer.headers["location"].rsplit("/", 1)[-1]
            await self.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        return answer

    def send(self, event: dict[str, Any]) -> None:
        self.channel.send(json.dumps(event))

    async def until(self, kind: str, wait_s: float = 60, **match: Any) -> dict[str, Any]:
        """The first event of type ``kind`` (with the given fields), waiting for it."""
        async with asyncio.timeout(wait_s):
            while True:
                for _, event in self.events:
                    if event["type"] == kind and all(event.get(k) == v for k, v in match.items()):
                        return event
                self._arrived.clear()
                await self._arrived.wait()

    def arrival(self, event: dict[str, Any]) -> float:
        return next(at for at, e in self.events if e is event)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await self.pc.close()
