"""Twilio's side of a call, for tests and benchmarks: the signed voice webhook, then the
bidirectional Media Stream it asks for.

The caller speaks a recording as mu-law in 20 ms ``media`` messages at real-time pace (mu-law
silence between), and plays what the server sends as Twilio does: in real time from a buffer,
echoing each ``mark`` once the audio before it has played, and on ``clear`` dropping the
buffer and echoing every pending mark at once. Everything is timed on arrival
(``time.monotonic()``), so tests can compare what the server cut with what was played.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
import xml.etree.ElementTree as ET
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import numpy as np
from twilio.request_validator import RequestValidator
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from parley.audio.frames import Frame
from parley.audio.g711 import ulaw_decode, ulaw_encode
from parley.audio.resample import resample

VOICE_PATH = "/v1/telephony/twilio/voice"
RATE = 8000
FRAME = 160  # 20 ms of mu-law
SILENCE = bytes([0xFF]) * FRAME  # mu-law's zero


@dataclass
class Echo:
    """A mark the caller sent back: when, its name, where in the reply audio it stood (ms of
    audio received before it), and whether a ``clear`` flushed it (never played)."""

    at: float
    name: str
    position_ms: float
    cleared: bool


@dataclass
class Twiml:
    stream_url: str
    parameters: dict[str, str]
    action: str | None


def parse_twiml(text: str) -> Twiml:
    root = ET.fromstring(text)
    connect = root.find("Connect")
    assert connect is not None, text
    stream = connect.find("Stream")
    assert stream is not None, text
    params = {p.get("name", ""): p.get("value", "") for p in stream.findall("Parameter")}
    return Twiml(stream.get("url", ""), params, connect.get("action"))


def signed(token: str, url: str, params: dict[str, str] | None = None) -> str:
    return str(RequestValidator(token).compute_signature(url, params or {}))


@dataclass
class _Buffer:
    """Twilio's playout buffer: audio and marks in the order they came."""

    items: deque[tuple[str, Any]] = field(
        default_factory=deque
    )  # ("audio", bytes) | ("mark", name)

    def has_audio(self) -> bool:
        return any(kind == "audio" for kind, _ in self.items)


class TwilioCaller:
    """One call from Twilio to a parley server at ``base`` (``http://127.0.0.1:PORT``)."""

    def __init__(
        self,
        base: str,
        auth_token: str,
        *,
        to: str = "+15550100",
        caller: str = "+15557770000",
        playout_delay_s: float = 0.0,
    ) -> None:
        self.base = base.rstrip("/")
        self.token = auth_token
        self.to, self.caller = to, caller
        self.call_sid = "CA" + uuid.uuid4().hex
        self.account_sid = "AC" + uuid.uuid4().hex
        self.stream_sid = "MZ" + uuid.uuid4().hex
        self.playout_delay_s = playout_delay_s
        self.twiml: Twiml | None = None
        self.ws: ClientConnection | None = None
        self._seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._changed = asyncio.Event()
        # the microphone
        self._speech: deque[list[Any]] = deque()  # [mu-law bytes, speech bytes left]
        self.last_speech_sent: float | None = None
        self.frames_sent = 0
        # what came back
        self.messages: list[tuple[float, dict[str, Any]]] = []
        self.received_ms = 0.0  # reply audio received
        self.media_arrivals: list[tuple[float, float, bytes]] = []  # (at, position ms, mu-law)
        self.clears: list[float] = []
        self.echoes: list[Echo] = []
        self._mark_positions: dict[str, float] = {}
        self._buffer = _Buffer()
        self._play_from: float | None = None
        self._due: list[str] = []  # marks reached in the audio playing now
        self.played_ms = 0.0
        self.heard: list[tuple[float, np.ndarray]] = []  # (when played, 8 kHz samples)
        self.closed_at: float | None = None
        self.close_code: int | None = None

    # --- the call -----------------------------------------------------------------------------

    async def webhook(self, *, signature: str | None = None) -> httpx.Response:
        """Twilio's voice webhook for this call (signed unless ``signature`` says otherwise)."""
        url = self.base + VOICE_PATH
        params = {
            "CallSid": self.call_sid,
            "AccountSid": self.account_sid,
            "From": self.caller,
            "To": self.to,
            "CallStatus": "ringing",
            "Direction": "inbound",
            "ApiVersion": "2010-04-01",
        }
        sig = signed(self.token, url, params) if signature is None else signature
        async with httpx.AsyncClient() as http:
            return await http.post(url, data=params, headers={"X-Twilio-Signature": sig})

    async def dial(self, *, parameters: dict[str, str] | None = None) -> None:
        """The webhook, then the stream its TwiML names: ``connected`` and ``start``."""
        answer = await self.webhook()
        assert answer.status_code == 200, answer.text
        self.twiml = parse_twiml(answer.text)
        url = self.twiml.stream_url
        self.ws = await connect(
            url, additional_headers={"X-Twilio-Signature": signed(self.token, url)}
        )
        await self._send({"event": "connected", "protocol": "Call", "version": "1.0.0"})
        await self._send(
            {
                "event": "start",
                "sequenceNumber": self._next_seq(),
                "start": {
                    "accountSid": self.account_sid,
                    "streamSid": self.stream_sid,
                    "callSid": self.call_sid,
                    "tracks": ["inbound"],
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                    "customParameters": (
                        self.twiml.parameters if parameters is None else parameters
                    ),
                },
                "streamSid": self.stream_sid,
            }
        )
        self._tasks = [
            asyncio.ensure_future(self._microphone()),
            asyncio.ensure_future(self._read()),
            asyncio.ensure_future(self._playout()),
        ]

    def say(self, clip: Frame, *, then_silence_s: float = 0.0) -> None:
        """Speak ``clip`` (any rate) after what is queued, then ``then_silence_s`` of silence."""
        codes = ulaw_encode(resample(clip, RATE).samples).tobytes()
        self._speech.append([codes + SILENCE * round(then_silence_s / 0.02), len(codes)])

    async def press(self, digit: str) -> None:
        await self._send(
            {
                "event": "dtmf",
                "streamSid": self.stream_sid,
                "sequenceNumber": self._next_seq(),
                "dtmf": {"track": "inbound_track", "digit": digit},
            }
        )

    async def stop(self) -> float:
        """Twilio's ``stop`` (the caller hung up); seconds until the server closed the socket."""
        sent = time.monotonic()
        await self._send(
            {
                "event": "stop",
                "sequenceNumber": self._next_seq(),
                "streamSid": self.stream_sid,
                "stop": {"accountSid": self.account_sid, "callSid": self.call_sid},
            }
        )
        for task in self._tasks[:1]:  # Twilio sends nothing after stop
            task.cancel()
        await self.wait(lambda: self.closed_at is not None, 10)
        assert self.closed_at is not None
        return self.closed_at - sent

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def wait(self, condition: Callable[[], bool], wait_s: float = 30) -> None:
        """Until ``condition()`` holds (checked on every message and playout tick)."""
        async with asyncio.timeout(wait_s):
            while not condition():
                self._changed.clear()
                await self._changed.wait()

    # --- what the tests look at ---------------------------------------------------------------

    def of(self, event: str) -> list[dict[str, Any]]:
        return [m for _, m in self.messages if m.get("event") == event]

    def first_media_after(self, t: float) -> float | None:
        return next((at for at, _, _ in self.media_arrivals if at >= t), None)

    def heard_since(self, t: float) -> np.ndarray:
        parts = [pcm for at, pcm in self.heard if at >= t]
        return np.concatenate(parts) if parts else np.zeros(0, np.int16)

    def heard_by_marks(self, before: float) -> float:
        """Where the reply stood at the last mark echoed as played before ``before``."""
        played = [e.position_ms for e in self.echoes if not e.cleared and e.at < before]
        return max(played, default=0.0)

    # --- inside -------------------------------------------------------------------------------

    def _next_seq(self) -> str:
        self._seq += 1
        return str(self._seq)

    async def _send(self, message: dict[str, Any]) -> None:
        assert self.ws is not None
        await self.ws.send(json.dumps(message))

    async def _microphone(self) -> None:
        with contextlib.suppress(ConnectionClosed):  # the server ended the call
            await self._speak()

    async def _speak(self) -> None:
        start = time.monotonic()
        chunk = 0
        while True:
            payload = SILENCE
            if self._speech:
                piece = self._speech[0]
                payload = piece[0][:FRAME].ljust(FRAME, b"\xff")
                if 0 < piece[1] <= FRAME:  # this frame carries the clip's last speech sample
                    self.last_speech_sent = time.monotonic()
                piece[0], piece[1] = piece[0][FRAME:], max(piece[1] - FRAME, 0)
                if not piece[0]:
                    self._speech.popleft()
            chunk += 1
            await self._send(
                {
                    "event": "media",
                    "sequenceNumber": self._next_seq(),
                    "media": {
                        "track": "inbound",
                        "chunk": str(chunk),
                        "timestamp": str(chunk * 20),
                        "payload": base64.b64encode(payload).decode(),
                    },
                    "streamSid": self.stream_sid,
                }
            )
            self.frames_sent += 1
            await asyncio.sleep(max(0.0, start + chunk * 0.02 - time.monotonic()))

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for raw in self.ws:
                now = time.monotonic()
                message = json.loads(raw)
                self.messages.append((now, message))
                assert message.get("streamSid") == self.stream_sid, message
                match message["event"]:
                    case "media":
                        codes = base64.b64decode(message["media"]["payload"], validate=True)
                        self.media_arrivals.append((now, self.received_ms, codes))
                        self.received_ms += 1000 * len(codes) / RATE
                        if not self._buffer.has_audio() and self._play_from is None:
                            self._play_from = now + self.playout_delay_s
                        self._buffer.items.append(("audio", codes))
                    case "mark":
                        name = message["mark"]["name"]
                        self._mark_positions[name] = self.received_ms
                        self._buffer.items.append(("mark", name))
                    case "clear":
                        self.clears.append(now)
                        due, self._due = self._due, []
                        for name in due:  # played to its end before the clear came
                            await self._echo(name, cleared=False)
                        for kind, value in self._buffer.items:
                            if kind == "mark":
                                await self._echo(value, cleared=True)
                        self._buffer.items.clear()
                        self._play_from = None
                self._changed.set()
        except Exception:
            pass
        finally:
            self.closed_at = time.monotonic()
            if self.ws is not None:
                self.close_code = self.ws.close_code
            self._changed.set()

    async def _echo(self, name: str, *, cleared: bool) -> None:
        self.echoes.append(
            Echo(time.monotonic(), name, self._mark_positions.pop(name, 0.0), cleared)
        )
        with contextlib.suppress(Exception):
            await self._send(
                {
                    "event": "mark",
                    "sequenceNumber": self._next_seq(),
                    "streamSid": self.stream_sid,
                    "mark": {"name": name},
                }
            )

    async def _playout(self) -> None:
        """Play 20 ms per tick from the buffer, in real time; echo marks as they are reached."""
        start = time.monotonic()
        tick = 0
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, start + tick * 0.02 - time.monotonic()))
            items = self._buffer.items
            now = time.monotonic()
            due, self._due = self._due, []
            for name in due:  # their audio finished playing during the last tick
                await self._echo(name, cleared=False)
            if self._play_from is not None and now < self._play_from:
                continue
            while items and items[0][0] == "mark":  # nothing before them left to play
                await self._echo(items.popleft()[1], cleared=False)
            played = b""
            while items and (items[0][0] == "mark" or len(played) < FRAME):
                kind, value = items.popleft()
                if kind == "mark":
                    self._due.append(value)
                    continue
                take = value[: FRAME - len(played)]
                played += take
                if len(take) < len(value):
                    items.appendleft(("audio", value[len(take) :]))
            if played:
                self.played_ms += 1000 * len(played) / RATE
                self.heard.append((now, ulaw_decode(played)))
            if not self._buffer.has_audio():
                self._play_from = None
            self._changed.set()
