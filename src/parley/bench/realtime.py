"""``parley bench realtime``: many concurrent callers on the Realtime API, measured as they hear it.

Each simulated caller opens its own WebSocket (the raw GA protocol, no SDK), speaks shared speech
clips at real-time pace in 20 ms packets, keeps its microphone open (silence) while the reply
arrives and plays, and measures the turn gap from the last speech sample it sent to the first reply
audio it received. The server's own stage breakdown for the turn arrives as
``parley.turn.timeline``. This module drives sockets and clocks only; summaries, the SLO, the table
and the PNG live in :mod:`parley.bench.report`. It must not import the server: it measures parley
from outside, as any client would. The one engine it uses, the VAD, only marks offline where each
clip's speech ends, so that the turn gap starts at the last voiced sample by the same definition
the server's timeline uses rather than at a recording's trailing room tone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import math
import os
import platform
import random
import shlex
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI, WebSocketException

from parley.audio.files import read_audio
from parley.audio.resample import resample
from parley.bench.clips import load_clips
from parley.bench.report import (
    evaluate_slo,
    print_results,
    require_matplotlib,
    summarize_level,
    sweep_answer,
)
from parley.errors import ConfigError, EngineUnavailableError

__all__ = [
    "BargeIn",
    "BenchConfig",
    "Playback",
    "TurnRecord",
    "Utterance",
    "add_bench_parser",
    "check_reachable",
    "load_utterances",
    "prepare_utterance",
    "run_bench",
    "simulate_playback",
]

RATE = 24000
PACKET_MS = 20
PACKET = RATE * PACKET_MS // 1000
REPLY_TIMEOUT_S = 20.0
CONNECT_TIMEOUT_S = 10.0
BARGE_IN_DELAY_S = 0.3
LONG_REQUEST = "Tell me everything about parley, in as much detail as you can."
# Trailing and leading frames this far below the clip's loudest 20 ms frame count as silence: the
# turn gap starts at the last speech sample, not at the end of a recording's room tone.
TRIM_DB = 35.0
# A clip whose speech has pauses longer than this many ms would be several turns, not one.
CLIP_MAX_PAUSE_MS = 500
SCHEMA = "parley.bench.realtime/1"


# --- configuration and records -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BenchConfig:
    url: str
    levels: tuple[int, ...]
    turns: int
    silence_ms: int = 500
    slo_p95_ms: float = 500.0
    barge_in: bool = False
    seed: int = 0
    keep_going: bool = False
    reply_timeout_s: float = REPLY_TIMEOUT_S
    api_key: str | None = field(default=None, repr=False)  # never written to the result

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


@dataclass(frozen=True, slots=True)
class Utterance:
    """A clip ready to stream: 24 kHz pcm16 in 20 ms ``input_audio_buffer.append`` events."""

    id: str
    packets: tuple[str, ...]
    speech_ms: float  # where the speech ends, from the first packet's start
    end_packet: int  # the packet holding the last voiced sample
    end_offset_ms: float  # how long before the end of that packet the speech ends


@dataclass(frozen=True, slots=True)
class Playback:
    """A client's playback buffer that starts playing at the first audio chunk."""

    underruns: int
    starved_ms: float
    end_ms: float  # when the last received audio finishes playing (same clock as the arrivals)


@dataclass(frozen=True, slots=True)
class BargeIn:
    stop_ms: float  # first interrupting sample sent -> last audio delta of the reply received
    already_complete: bool  # the reply had fully arrived before the caller spoke over it
    status: str  # response.done status of the interrupted reply
    reason: str | None  # its status_details.reason, e.g. turn_detected
    playback_left_ms: float  # how much of it the caller would still have been playing
    detect_ms: float | None  # first interrupting sample sent -> speech_started received


@dataclass(frozen=True, slots=True)
class TurnRecord:
    session: int
    turn: int
    kind: str  # "speech" or "barge_in"
    clip: str
    speech_ms: float
    turn_gap_ms: float | None = None
    turn_gap_minus_silence_ms: float | None = None
    stages_ms: dict[str, float] = field(default_factory=dict)
    server_turn_gap_ms: float | None = None
    response_latency_ms: float | None = None
    socket_send_ms: float | None = None
    overhead_ms: float | None = None  # client turn gap minus the server's stages
    reply_audio_ms: float = 0.0
    underruns: int = 0
    underrun_ms: float = 0.0
    transcript: str = ""
    reply: str = ""
    response_id: str | None = None
    status: str | None = None
    error: str | None = None
    barge_in: BargeIn | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _rounded(asdict(self))
        return out


def _rounded(value: Any) -> Any:
    """Floats to 3 decimals, and NaN or infinity (which JSON lacks) to None."""
    if isinstance(value, float):
        return round(value, 3) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


# --- pure helpers ------------------------------------------------------------------------------


def simulate_playback(arrivals: Sequence[tuple[float, float]]) -> Playback:
    """Play chunks that arrive at ``(arrival_ms, duration_ms)`` through a buffer that starts at the
    first arrival: an underrun is a chunk that arrives after everything before it has played."""
    if not arrivals:
        return Playback(0, 0.0, 0.0)
    first_at, first_ms = arrivals[0]
    end = first_at + first_ms
    count, starved = 0, 0.0
    for at, duration in arrivals[1:]:
        if at > end:
            count += 1
            starved += at - end
            end = at
        end += duration
    return Playback(count, starved, end)


def _loud_span(samples: np.ndarray) -> tuple[int, int]:
    """First and end sample of the 20 ms frames within ``TRIM_DB`` of the loudest one."""
    frames = len(samples) // PACKET
    if frames == 0:
        return 0, len(samples)
    power = (samples[: frames * PACKET].astype(np.float64).reshape(frames, PACKET) ** 2).mean(1)
    db = 10 * np.log10(power + 1e-9)
    voiced = np.flatnonzero(db > db.max() - TRIM_DB)
    return int(voiced[0]) * PACKET, (int(voiced[-1]) + 1) * PACKET


def _append_event(pcm: np.ndarray) -> str:
    audio = base64.b64encode(pcm.astype("<i2").tobytes()).decode()
    return json.dumps({"type": "input_audio_buffer.append", "audio": audio})


SILENCE = _append_event(np.zeros(PACKET, np.int16))


def prepare_utterance(clip_id: str, samples: np.ndarray, speech_end_ms: float) -> Utterance:
    """24 kHz samples cut into 20 ms append events: from the first loud frame to the later of
    the last loud frame and ``speech_end_ms`` (the VAD's last voiced sample, in ``samples``)."""
    first, last = _loud_span(samples)
    speech_end = min(len(samples), max(first + 1, round(speech_end_ms * RATE / 1000)))
    audio = samples[first : max(last, speech_end)]
    audio = np.concatenate([audio, np.zeros(-len(audio) % PACKET, np.int16)])
    packets = tuple(_append_event(audio[i : i + PACKET]) for i in range(0, len(audio), PACKET))
    end = speech_end - first  # samples of speech from the start of the first packet
    end_packet = (end - 1) // PACKET
    return Utterance(
        clip_id,
        packets,
        speech_ms=end * 1000 / RATE,
        end_packet=end_packet,
        end_offset_ms=((end_packet + 1) * PACKET - end) * 1000 / RATE,
    )


async def load_utterances(
    folder: Path | None, max_clip_s: float, silence_ms: int = CLIP_MAX_PAUSE_MS
) -> tuple[list[Utterance], list[str]]:
    """The English clips of at most ``max_clip_s`` that are one turn each (no pause the server
    would end a turn at); also the ids of those skipped for pausing."""
    from parley.config import VADSettings
    from parley.engines.registry import build_vad
    from parley.pipeline.segments import find_speech

    clips = [c for c in load_clips(folder, language="en") if c.duration_s <= max_clip_s]
    vad = build_vad(VADSettings())
    utterances: list[Utterance] = []
    skipped: list[str] = []
    for clip in clips:
        frame = resample(read_audio(clip.path), RATE)
        segments = await find_speech(vad, frame, silence_duration_ms=silence_ms)
        if len(segments) != 1:
            skipped.append(clip.id)
            continue
        utterances.append(prepare_utterance(clip.id, frame.samples, segments[0].end_ms))
    if not utterances:
        raise ConfigError(
            f"no English clip of at most {max_clip_s:g} s with one stretch of speech in "
            f"{folder or 'the shared clips'}"
        )
    return utterances, skipped


def session_url(url: str) -> str:
    """The Realtime URL with ``model`` (kept if given) and ``parley_timeline=1`` in its query."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--url must be a ws:// or wss:// address, got {url!r}")
    query = dict(parse_qsl(parts.query))
    query.setdefault("model", "parley")
    query["parley_timeline"] = "1"
    return urlunsplit(parts._replace(query=urlencode(query)))


def _audio_ms(b64: str) -> float:
    """Duration of base64 pcm16 24 kHz audio, without decoding it."""
    pad = 2 if b64.endswith("==") else 1 if b64.endswith("=") else 0
    return (len(b64) * 3 // 4 - pad) / 2 * 1000 / RATE


def _now() -> float:
    return time.perf_counter()


# --- one caller --------------------------------------------------------------------------------


class _Dropped(Exception):
    """The caller's connection is gone."""


# What ends one caller (counted as a dropped session), never the run.
_FAILURES = (_Dropped, OSError, TimeoutError, WebSocketException)


@dataclass(slots=True)
class _Reply:
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
class _Speaking:
    utterance: Utterance
    started_at: float | None = None  # first speech packet sent
    ended_at: float | None = None  # last speech sample sent


@dataclass(slots=True)
class _Line:
    """What one caller's socket has received, and a way to wait for more."""

    ws: ClientConnection
    replies: dict[str, _Reply] = field(default_factory=dict)
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
        now = _now()
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
                    self.replies[rid] = _Reply(rid, now)
                case "response.done":
                    response = event["response"]
                    reply = self.replies.setdefault(response["id"], _Reply(response["id"], now))
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
        """Wait until ``ready()``; False after ``wait_s``; raises :class:`_Dropped` if closed."""
        deadline = _now() + wait_s
        while not ready():
            if self.closed is not None:
                raise _Dropped(self.closed)
            remaining = deadline - _now()
            if remaining <= 0:
                return False
            self.changed.clear()
            try:
                async with asyncio.timeout(remaining):
                    await self.changed.wait()
            except TimeoutError:
                return ready()
        return True


class _Mic:
    """The caller's microphone: one 20 ms packet per tick of a monotonic schedule for the whole
    call, queued speech when there is some and silence otherwise. Packets are due at fixed
    times, so a late send is followed by a catch-up, never by drift."""

    def __init__(self, line: _Line) -> None:
        self.line = line
        self.queue: deque[_Speaking] = deque()
        self.lag_ms = 0.0  # how far behind schedule this client ever sent a packet

    def say(self, utterance: Utterance) -> _Speaking:
        speaking = _Speaking(utterance)
        self.queue.append(speaking)
        return speaking

    async def run(self) -> None:
        start = _now()
        tick = 0
        current: _Speaking | None = None
        index = 0
        while True:
            tick += 1
            due = start + tick * PACKET_MS / 1000
            delay = due - _now()
            if delay > 0:
                await asyncio.sleep(delay)
            # An overloaded client sends late and would blame the server: say so.
            self.lag_ms = max(self.lag_ms, (_now() - due) * 1000)
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
            sent = _now()
            if index == 0:
                current.started_at = sent
            index += 1
            if index == current.utterance.end_packet + 1:
                current.ended_at = sent - current.utterance.end_offset_ms / 1000
            if index == len(current.utterance.packets):
                current = None
            self.line.changed.set()


@dataclass(slots=True)
class _Outcome:
    records: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dropped: bool = False
    lag_ms: float = 0.0


class _Caller:
    def __init__(
        self,
        config: BenchConfig,
        session: int,
        utterances: Sequence[Utterance],
        on_turn: Callable[[], None],
    ) -> None:
        self.config = config
        self.session = session
        self.utterances = utterances
        self.on_turn = on_turn
        self.outcome = _Outcome()

    def _clip(self, n: int) -> Utterance:
        return self.utterances[(self.session + n) % len(self.utterances)]

    async def call(self, start_delay_s: float) -> _Outcome:
        """Connect, play every turn, hang up; a failure ends this caller only."""
        await asyncio.sleep(start_delay_s)
        out = self.outcome
        failure: Exception | None = None
        try:
            async with connect(
                session_url(self.config.url),
                additional_headers=self.config.headers(),
                compression=None,
                proxy=None,
                open_timeout=CONNECT_TIMEOUT_S,
                ping_interval=None,
                max_size=16 * 2**20,
            ) as ws:
                line = _Line(ws)
                mic = _Mic(line)
                async with asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(line.receive()), tg.create_task(mic.run())]
                    try:
                        await self._play(line, mic)
                    # Caught inside the group: a 3.11 TaskGroup would wrap it in a group.
                    except _FAILURES as exc:
                        failure = exc
                    finally:
                        line.closing = True
                        out.lag_ms = mic.lag_ms
                        out.errors += [f"session {self.session}: {e}" for e in line.errors]
                        for task in tasks:
                            task.cancel()
        except _FAILURES as exc:
            failure = exc
        if failure is not None:
            self._dropped(failure)
        return out

    async def _play(self, line: _Line, mic: _Mic) -> None:
        await self._configure(line)
        for turn in range(self.config.turns):
            if self.config.barge_in and turn == self.config.turns - 1:
                record = await self._barge_in_turn(line, mic, turn)
            else:
                record = await self._speech_turn(line, mic, turn)
            self.outcome.records.append(record)
            self.on_turn()

    def _dropped(self, failure: Exception) -> None:
        out = self.outcome
        turn = len(out.records)
        reason = str(failure) or type(failure).__name__
        out.dropped = True
        if turn >= self.config.turns:
            out.errors.append(f"session {self.session}: dropped after its last turn: {reason}")
        else:  # the unfinished turn's record carries the error
            barge = self.config.barge_in and turn == self.config.turns - 1
            utterance = self._clip(turn)
            out.records.append(
                TurnRecord(
                    self.session,
                    turn,
                    "barge_in" if barge else "speech",
                    utterance.id,
                    utterance.speech_ms,
                    error=f"dropped: {reason}",
                )
            )
            self.on_turn()

    async def _configure(self, line: _Line) -> None:
        if not await line.until(lambda: line.session_ready, CONNECT_TIMEOUT_S):
            raise _Dropped("no session.created")
        update = {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {
                        "turn_detection": {
                            "type": "server_vad",
                            "silence_duration_ms": self.config.silence_ms,
                        }
                    }
                },
            },
        }
        await line.ws.send(json.dumps(update))
        if not await line.until(lambda: line.settings_applied, CONNECT_TIMEOUT_S):
            raise _Dropped("no session.updated")

    async def _speak(self, line: _Line, mic: _Mic, utterance: Utterance) -> _Speaking:
        speaking = mic.say(utterance)
        wait_s = utterance.speech_ms / 1000 + CONNECT_TIMEOUT_S
        if not await line.until(lambda: speaking.ended_at is not None, wait_s):
            raise _Dropped("the microphone fell behind by more than 10 s")
        return speaking

    async def _reply_after(self, line: _Line, spoken_at: float, exclude: str = "") -> _Reply | None:
        """The reply that ends the turn: the first response done after the caller stopped
        speaking (a reply cancelled by the caller's own speech mid-clip does not count)."""
        found: list[_Reply] = []

        def ready() -> bool:
            for reply in line.replies.values():
                if reply.id == exclude or reply.done_at is None or reply.done_at <= spoken_at:
                    continue
                if reply.status == "completed" or reply.created_at > spoken_at:
                    found.append(reply)
                    return True
            return False

        if not await line.until(ready, self.config.reply_timeout_s):
            return None
        reply = found[0]
        await line.until(lambda: reply.timeline is not None, 2.0)
        return reply

    async def _speech_turn(
        self,
        line: _Line,
        mic: _Mic,
        turn: int,
        *,
        kind: str = "speech",
        exclude: str = "",
        barge_in: Callable[[float], BargeIn] | None = None,
    ) -> TurnRecord:
        utterance = self._clip(turn)
        began = _now()
        speaking = await self._speak(line, mic, utterance)
        assert speaking.ended_at is not None and speaking.started_at is not None
        spoken_at = speaking.ended_at
        reply = await self._reply_after(line, spoken_at, exclude)
        interrupt = barge_in(speaking.started_at) if barge_in is not None else None
        base = TurnRecord(
            self.session, turn, kind, utterance.id, utterance.speech_ms, barge_in=interrupt
        )
        if reply is None:
            return _with(base, error=f"no reply within {self.config.reply_timeout_s:g} s")
        assert reply.done_at is not None
        heard = " ".join(t for at, t in line.transcripts if began < at <= reply.done_at)
        record = _with(
            base,
            transcript=heard.strip(),
            reply="".join(reply.text).strip(),
            response_id=reply.id,
            status=reply.status,
        )
        if reply.status != "completed":
            return _with(record, error=f"response {reply.status} ({reply.reason or 'no reason'})")
        if not reply.arrivals:
            return _with(record, error="the reply had no audio")
        playback = reply.playback()
        gap = (reply.arrivals[0][0] - spoken_at) * 1000
        timeline = reply.timeline or {}
        stages = {k: float(v) for k, v in (timeline.get("stages_ms") or {}).items()}
        record = _with(
            record,
            turn_gap_ms=gap,
            turn_gap_minus_silence_ms=gap - self.config.silence_ms,
            stages_ms=stages,
            server_turn_gap_ms=timeline.get("turn_gap_ms"),
            response_latency_ms=timeline.get("response_latency_ms"),
            socket_send_ms=timeline.get("socket_send_ms"),
            overhead_ms=gap - sum(stages.values()) if stages else None,
            reply_audio_ms=sum(ms for _, ms in reply.arrivals),
            underruns=playback.underruns,
            underrun_ms=playback.starved_ms,
            error=None if gap > 0 else "the reply began before the caller finished speaking",
        )
        if reply.timeline is None:
            record = _with(record, error="no parley.turn.timeline for the reply")
        # The caller listens to the whole reply (its microphone still open) before speaking again.
        await asyncio.sleep(max(0.0, playback.end_ms / 1000 - _now()))
        return record

    async def _barge_in_turn(self, line: _Line, mic: _Mic, turn: int) -> TurnRecord:
        """Ask for a long reply, let it play for a moment, then speak over it."""
        asked = _now()
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": LONG_REQUEST}],
        }
        await line.ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await line.ws.send(json.dumps({"type": "response.create"}))
        found: list[_Reply] = []

        def playing() -> bool:
            found[:] = [r for r in line.replies.values() if r.created_at > asked and r.arrivals]
            return bool(found)

        utterance = self._clip(turn)
        if not await line.until(playing, self.config.reply_timeout_s):
            return TurnRecord(
                self.session,
                turn,
                "barge_in",
                utterance.id,
                utterance.speech_ms,
                error=f"no audio for the long reply within {self.config.reply_timeout_s:g} s",
            )
        long = found[0]
        await asyncio.sleep(BARGE_IN_DELAY_S)

        def measure(interrupted_at: float) -> BargeIn:
            last_delta = long.arrivals[-1][0]
            detected = [t for t in line.speech_started if t > interrupted_at]
            return BargeIn(
                stop_ms=max(0.0, (last_delta - interrupted_at) * 1000),
                already_complete=long.done_at is not None and long.done_at <= interrupted_at,
                status=long.status or "in_progress",
                reason=long.reason,
                playback_left_ms=max(0.0, long.playback().end_ms - interrupted_at * 1000),
                detect_ms=(detected[0] - interrupted_at) * 1000 if detected else None,
            )

        return await self._speech_turn(
            line, mic, turn, kind="barge_in", exclude=long.id, barge_in=measure
        )


def _with(record: TurnRecord, **changes: Any) -> TurnRecord:
    return replace(record, **changes)


# --- a level and a sweep -----------------------------------------------------------------------


async def check_reachable(url: str, api_key: str | None = None) -> None:
    """Fail fast, with one line, when nothing answers at the URL or it refuses the key."""
    target = session_url(url)
    headers = BenchConfig(url, (1,), 1, api_key=api_key).headers()
    try:
        async with connect(
            target, additional_headers=headers, proxy=None, open_timeout=5, compression=None
        ):
            pass
    except InvalidURI as exc:
        raise ConfigError(f"--url is not a WebSocket address: {exc}") from exc
    except InvalidStatus as exc:
        status = exc.response.status_code
        hint = " (pass --api-key or set PARLEY_API_KEY)" if status == 401 else ""
        raise EngineUnavailableError(f"{url} refused the connection: HTTP {status}{hint}") from exc
    except (OSError, TimeoutError, WebSocketException) as exc:
        reason = str(exc) or type(exc).__name__
        raise EngineUnavailableError(f"cannot reach a Realtime server at {url}: {reason}") from exc


async def run_level(
    config: BenchConfig,
    utterances: Sequence[Utterance],
    sessions: int,
    on_turn: Callable[[], None] = lambda: None,
) -> dict[str, Any]:
    """``sessions`` concurrent callers, ``config.turns`` turns each; the level as a JSON dict."""
    rng = random.Random(config.seed * 100_003 + sessions)
    delays = [rng.uniform(0.0, 1.0) for _ in range(sessions)]
    callers = [_Caller(config, s, utterances, on_turn) for s in range(sessions)]
    started = _now()
    async with asyncio.TaskGroup() as tg:
        tasks = [tg.create_task(c.call(d)) for c, d in zip(callers, delays, strict=True)]
    outcomes = [t.result() for t in tasks]
    records = sorted((r for o in outcomes for r in o.records), key=lambda r: (r.session, r.turn))
    turns = [r.to_dict() for r in records]
    errors = [e for o in outcomes for e in o.errors]
    errors += [f"session {r.session} turn {r.turn}: {r.error}" for r in records if r.error]
    level: dict[str, Any] = {
        "sessions": sessions,
        "turns_per_session": config.turns,
        "expected_turns": sessions * config.turns,
        "completed_turns": sum(1 for r in records if r.error is None),
        "wall_s": round(_now() - started, 2),
        "client_lag_ms": round(max((o.lag_ms for o in outcomes), default=0.0), 1),
        "dropped_sessions": sum(1 for o in outcomes if o.dropped),
        "error_count": len(errors),
        "errors": errors,
        "summary": summarize_level(turns),
        "turns": turns,
    }
    level["slo"] = evaluate_slo(level, config.slo_p95_ms)
    return level


async def run_bench(
    config: BenchConfig, utterances: Sequence[Utterance], console: Console
) -> dict[str, Any]:
    """Every level of the sweep (stopping after the first that misses the SLO unless
    ``keep_going``), with rich progress bars; the whole result as a JSON dict. A server that
    cannot be reached shows up as dropped sessions: check first with ``check_reachable``."""
    levels: list[dict[str, Any]] = []
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("turns"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        for n, sessions in enumerate(config.levels):
            if n:
                await asyncio.sleep(1.0)  # let the previous level's sessions wind down
            label = f"{sessions:>4} session" + ("" if sessions == 1 else "s")
            task = progress.add_task(label, total=sessions * config.turns)
            level = await run_level(config, utterances, sessions, partial(progress.advance, task))
            progress.update(task, completed=sessions * config.turns)
            levels.append(level)
            if not level["slo"]["pass"] and not config.keep_going:
                break
    return {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "machine": platform.machine(),
            "processor": platform.processor() or platform.machine(),
            "cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "python": platform.python_version(),
        },
        "command": command_line(config),
        "config": {
            "url": config.url,
            "levels": list(config.levels),
            "turns": config.turns,
            "silence_ms": config.silence_ms,
            "slo_p95_ms": config.slo_p95_ms,
            "barge_in": config.barge_in,
            "seed": config.seed,
            "clips": [u.id for u in utterances],
            "packet_ms": PACKET_MS,
            "sample_rate": RATE,
        },
        "levels": levels,
        "answer": {
            "max_sessions_within_slo": sweep_answer(levels),
            "slo": (
                f"turn gap minus the {config.silence_ms} ms silence window p95 <= "
                f"{config.slo_p95_ms:g} ms, no underruns, no errors"
            ),
        },
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return None


def command_line(config: BenchConfig) -> str:
    args = ["parley", "bench", "realtime", "--url", config.url, "--turns", str(config.turns)]
    if len(config.levels) == 1:
        args += ["--sessions", str(config.levels[0])]
    else:
        args += ["--sweep", ",".join(map(str, config.levels))]
    args += ["--silence-ms", str(config.silence_ms), "--slo-p95-ms", f"{config.slo_p95_ms:g}"]
    args += ["--seed", str(config.seed)]
    if config.barge_in:
        args.append("--barge-in")
    if config.keep_going:
        args.append("--keep-going")
    return shlex.join(args)


# --- the command -------------------------------------------------------------------------------


def _levels(args: argparse.Namespace) -> tuple[int, ...]:
    if args.sweep is None:
        levels: tuple[int, ...] = (args.sessions,)
    else:
        try:
            levels = tuple(int(x) for x in args.sweep.split(",") if x.strip())
        except ValueError:
            raise ConfigError(f"--sweep expects counts like 1,5,10, got {args.sweep!r}") from None
    if not levels or min(levels) < 1:
        raise ConfigError("session counts must be at least 1")
    return levels


async def _run_realtime(args: argparse.Namespace, console: Console) -> int:
    if args.turns < 1:
        raise ConfigError("--turns must be at least 1")
    config = BenchConfig(
        url=args.url,
        levels=_levels(args),
        turns=args.turns,
        silence_ms=args.silence_ms,
        slo_p95_ms=args.slo_p95_ms,
        barge_in=args.barge_in,
        seed=args.seed,
        keep_going=args.keep_going,
        api_key=args.api_key or os.environ.get("PARLEY_API_KEY") or None,
    )
    if args.png is not None:
        require_matplotlib()
    # Before any clip is decoded: a wrong URL or key fails at once.
    await check_reachable(config.url, config.api_key)
    utterances, skipped = await load_utterances(args.clips, args.max_clip_s, args.silence_ms)
    if skipped:
        console.print(f"skipped clips with pauses (several turns each): {', '.join(skipped)}")
    result = await run_bench(config, utterances, console)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1, allow_nan=False) + "\n")
    if args.png is not None:
        from parley.bench.report import write_png

        write_png(result, args.png)
    print_results(console, result)
    answer = result["answer"]["max_sessions_within_slo"]
    console.print(
        f"largest level within the SLO ({result['answer']['slo']}): "
        + ("none" if answer is None else f"{answer} session" + ("" if answer == 1 else "s"))
    )
    for path in (args.json, args.png):
        if path is not None:
            console.print(f"wrote {path}")
    return 0 if answer is not None else 1


async def _run_report(args: argparse.Namespace, console: Console) -> int:
    from parley.bench.report import load_result, write_png

    result = load_result(args.result)
    output = args.output or args.result.with_suffix(".png")
    write_png(result, output)
    print_results(console, result)
    console.print(f"wrote {output}")
    return 0


def add_bench_parser(subparsers: Any) -> None:
    """Add ``parley bench realtime`` and ``parley bench report`` to the CLI's subparsers."""
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", help="show tracebacks")
    summary = "load-test a Realtime server, time the engines, redraw a load test's report"
    bench = subparsers.add_parser(
        "bench", parents=[debug], help=summary, description=summary[0].upper() + summary[1:] + "."
    )
    actions = bench.add_subparsers(dest="bench_command", required=True, metavar="ACTION")
    from parley.bench import engines as engine_bench

    engine_bench.add_parser(actions, [debug])

    rt = actions.add_parser(
        "realtime",
        parents=[debug],
        help="many concurrent callers speaking clips in real time; turn gaps, stages, underruns",
        description="Many concurrent callers speak clips to a running Realtime server in real "
        "time; the table shows each level's turn gap (last speech sample sent -> first reply "
        "audio), the server's stages, underruns and the SLO verdict. Drawing --png needs the "
        "bench extra: pip install 'parley[bench]'.",
    )
    rt.add_argument("--url", default="ws://127.0.0.1:8000/v1/realtime", help="Realtime endpoint")
    rt.add_argument("--sessions", type=int, default=1, help="concurrent sessions (default 1)")
    rt.add_argument("--turns", type=int, default=3, help="turns per session (default 3)")
    rt.add_argument("--sweep", metavar="N,N,...", help="run at each concurrency, e.g. 1,5,10,20")
    rt.add_argument(
        "--keep-going", action="store_true", help="run every sweep level even after an SLO miss"
    )
    rt.add_argument("--clips", type=Path, help="folder with manifest.jsonl (default shared clips)")
    rt.add_argument(
        "--max-clip-s", type=float, default=8.0, help="skip clips longer than this (default 8)"
    )
    rt.add_argument(
        "--slo-p95-ms",
        type=float,
        default=500.0,
        help="limit on the p95 turn gap minus the silence window, in ms (default 500)",
    )
    rt.add_argument(
        "--silence-ms",
        type=int,
        default=500,
        help="server VAD silence_duration_ms set on each session (default 500)",
    )
    rt.add_argument(
        "--barge-in",
        action="store_true",
        help="in each session's last turn, speak over a long reply and time how fast it stops",
    )
    rt.add_argument("--seed", type=int, default=0, help="seed for the start stagger")
    rt.add_argument("--api-key", help="API key for the server (default $PARLEY_API_KEY)")
    rt.add_argument("--json", type=Path, help="write the full result here")
    rt.add_argument(
        "--png",
        type=Path,
        help="draw the report here (needs matplotlib: pip install 'parley[bench]')",
    )
    rt.set_defaults(run=_run_realtime)

    report = actions.add_parser(
        "report",
        parents=[debug],
        help="redraw the PNG report from a bench JSON result",
        description="Redraw the PNG report and print the table from the JSON that 'parley bench "
        "realtime --json' wrote. Needs matplotlib: pip install 'parley[bench]'.",
    )
    report.add_argument("result", type=Path, help="JSON written by 'parley bench realtime --json'")
    report.add_argument("-o", "--output", type=Path, help="PNG to write (default RESULT.png)")
    report.set_defaults(run=_run_report)
