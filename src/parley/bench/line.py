"""One simulated caller's WebSocket: what it has received (:class:`Line`) and the microphone that
streams to it (:class:`Mic`), one 20 ms packet at a time on a fixed schedule.

This module drives a socket and a clock only; it knows nothing of turns or of what they measure.
It must not import the server: it measures parley from outside, as any client would.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from parley.bench.records import Playback, simulate_playback
from parley.bench.utterances import PACKET_MS, RATE, SILENCE, Utterance

__all__ = ["Dropped", "Line", "Mic", "Reply", "Speaking", "clock"]


def _audio_ms(b64: str) -> float:
    """Duration of base64 pcm16 24 kHz audio, without decoding it."""
    pad = 2 if b64.endswith("==") else 1 if b64.endswith("=") else 0
    return (len(b64) * 3 // 4 - pad) / 2 * 1000 / RATE


def clock() -> float:
    """The callers' clock, in ``perf_counter`` seconds: sends, arrivals and deadlines."""
    return time.perf_counter()


class Dropped(Exception):
    """The caller's connection is gone."""


@dataclass(slots=True)
class Reply:
    """One response as the client saw it; times are ``perf_counter`` seconds."""

    id: str
    created_at: float
    arrivals: list[tuple[float, float]] = field(default_factory=list)  # (received s, audio ms)
    text: list[str] = field(default_factory=list)
    done_at: float | None = None
    status: str = ""
    reason: str | None = None
    timeline: dict[str, Any] | None = None

    def playback(self) -> Playback:
        return simulate_playback([(at * 1000, ms) for at, ms in self.arrivals])


@dataclass(slots=True)
class Speaking:
    utterance: Utterance
    started_at: float | None = None  # first speech packet sent
    ended_at: float | None = None  # last speech sample sent


@dataclass(slots=True)
class Line:
    """What one caller's socket has received, and a way to wait for more."""

    ws: ClientConnection
    replies: dict[str, Reply] = field(default_factory=dict)
    transcripts: list[tuple[float, str]] = field(default_factory=list)
    speech_started: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    session_ready: bool = False
    settings_applied: bool = False
    closed: str | None = None
    closing: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def receive(self) -> None:
        try:
            async for raw in self.ws:
                self._handle(raw)
                self.changed.set()
        except ConnectionClosed as exc:
            if not self.closing:
                self.closed = f"connection closed ({exc})"
        else:
            if not self.closing:
                self.closed = "the server closed the connection"
        self.changed.set()

    def _handle(self, raw: str | bytes) -> None:
        now = clock()
        try:
            event = json.loads(raw)
            kind = event["type"]
            match kind:
                case "response.output_audio.delta":
                    reply = self.replies.get(event["response_id"])
                    if reply is not None:
                        reply.arrivals.append((now, _audio_ms(event["delta"])))
                case "response.output_audio_transcript.delta":
                    if (reply := self.replies.get(event["response_id"])) is not None:
                        reply.text.append(event["delta"])
                case "response.created":
                    rid = event["response"]["id"]
                    self.replies[rid] = Reply(rid, now)
                case "response.done":
                    response = event["response"]
                    reply = self.replies.setdefault(response["id"], Reply(response["id"], now))
                    reply.done_at, reply.status = now, response["status"]
                    reply.reason = (response.get("status_details") or {}).get("reason")
                case "parley.turn.timeline":
                    if (reply := self.replies.get(event["response_id"])) is not None:
                        reply.timeline = event
                case "conversation.item.input_audio_transcription.completed":
                    self.transcripts.append((now, event["transcript"]))
                case "input_audio_buffer.speech_started":
                    self.speech_started.append(now)
                case "session.created":
                    self.session_ready = True
                case "session.updated":
                    self.settings_applied = True
                case "error":
                    error = event.get("error") or {}
                    self.errors.append(
                        f"{error.get('code') or error.get('type')}: {error.get('message')}"
                    )
                case _:
                    pass
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.errors.append(f"malformed server event ({type(exc).__name__}: {exc})")

    async def until(self, ready: Callable[[], bool], wait_s: float) -> bool:
        """Wait until ``ready()``; False after ``wait_s``; raises :class:`Dropped` if closed."""
        deadline = clock() + wait_s
        while not ready():
            if self.closed is not None:
                raise Dropped(self.closed)
            remaining = deadline - clock()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
            except TimeoutError:
                return ready()
        return True


class Mic:
    """The caller's microphone: one 20 ms packet per tick of a monotonic schedule for the whole
    call, queued speech when there is some and silence otherwise. Packets are due at fixed
    times, so a late send is followed by a catch-up, never by drift."""

    def __init__(self, line: Line) -> None:
        self.line = line
        self.queue: deque[Speaking] = deque()
        self.lag_ms = 0.0  # how far behind schedule this client ever sent a packet

    def say(self, utterance: Utterance) -> Speaking:
        speaking = Speaking(utterance)
        self.queue.append(speaking)
        return speaking

    async def run(self) -> None:
        start = clock()
        tick = 0
        current: Speaking | None = None
        index = 0
        while True:
            tick += 1
            due = start + tick * PACKET_MS / 1000
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            # An overloaded client sends late and would blame the server: say so.
            self.lag_ms = max(self.lag_ms, (clock() - due) * 1000)
            if current is None and self.queue:
                current, index = self.queue.popleft(), 0
            message = SILENCE if current is None else current.utterance.packets[index]
            try:
                await self.line.ws.send(message)
            except ConnectionClosed as exc:
                if not self.line.closing:
                    self.line.closed = f"connection closed while sending ({exc})"
                self.line.changed.set()
                return
            if current is None:
                continue
            sent = clock()
            if index == 0:
                current.started_at = sent
            index += 1
            if index == current.utterance.end_packet + 1:
                current.ended_at = sent - current.utterance.end_offset_ms / 1000
            if index == len(current.utterance.packets):
                current = None
            self.line.changed.set()
