"""One simulated caller of ``parley bench realtime``, measured as it hears the server.

Each caller opens its own WebSocket (the raw GA protocol, no SDK), speaks shared speech clips at
real-time pace in 20 ms packets, keeps its microphone open (silence) while the reply arrives and
plays, and measures the turn gap from the last speech sample it sent to the first reply audio it
received. The server's own stage breakdown for the turn arrives as ``parley.turn.timeline``. This
module drives sockets and clocks only; summaries, the SLO, the table and the PNG live in
:mod:`parley.bench.report`. It must not import the server: it measures parley from outside, as any
client would.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import connect
from websockets.exceptions import WebSocketException

from parley.bench.line import Dropped, Line, Mic, Reply, Speaking, clock
from parley.bench.records import BargeIn, BenchConfig, TurnRecord
from parley.bench.utterances import Utterance
from parley.errors import ConfigError

__all__ = ["CONNECT_TIMEOUT_S", "Caller", "session_url"]

CONNECT_TIMEOUT_S = 10.0
BARGE_IN_DELAY_S = 0.3
LONG_REQUEST = "Tell me everything about parley, in as much detail as you can."


def session_url(url: str) -> str:
    """The Realtime URL with ``model`` (kept if given) and ``parley_timeline=1`` in its query."""
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"--url must be a ws:// or wss:// address, got {url!r}")
    query = dict(parse_qsl(parts.query))
    query.setdefault("model", "parley")
    query["parley_timeline"] = "1"
    return urlunsplit(parts._replace(query=urlencode(query)))


# What ends one caller (counted as a dropped session), never the run.
_FAILURES = (Dropped, OSError, TimeoutError, WebSocketException)


@dataclass(slots=True)
class _Outcome:
    records: list[TurnRecord] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    dropped: bool = False
    lag_ms: float = 0.0


class Caller:
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
                line = Line(ws)
                mic = Mic(line)
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

    async def _play(self, line: Line, mic: Mic) -> None:
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

    async def _configure(self, line: Line) -> None:
        if not await line.until(lambda: line.session_ready, CONNECT_TIMEOUT_S):
            raise Dropped("no session.created")
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
                        if self.config.semantic is None
                        else {"type": "semantic_vad", "eagerness": self.config.semantic}
                    }
                },
            },
        }
        await line.ws.send(json.dumps(update))
        if not await line.until(lambda: line.settings_applied, CONNECT_TIMEOUT_S):
            raise Dropped("no session.updated")

    async def _speak(self, line: Line, mic: Mic, utterance: Utterance) -> Speaking:
        speaking = mic.say(utterance)
        wait_s = utterance.speech_ms / 1000 + CONNECT_TIMEOUT_S
        if not await line.until(lambda: speaking.ended_at is not None, wait_s):
            raise Dropped("the microphone fell behind by more than 10 s")
        return speaking

    async def _reply_after(self, line: Line, spoken_at: float, exclude: str = "") -> Reply | None:
        """The reply that ends the turn: the first response done after the caller stopped
        speaking (a reply cancelled by the caller's own speech mid-clip does not count)."""
        found: list[Reply] = []

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
        line: Line,
        mic: Mic,
        turn: int,
        *,
        kind: str = "speech",
        exclude: str = "",
        barge_in: Callable[[float], BargeIn] | None = None,
    ) -> TurnRecord:
        utterance = self._clip(turn)
        began = clock()
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
        await asyncio.sleep(max(0.0, playback.end_ms / 1000 - clock()))
        return record

    async def _barge_in_turn(self, line: Line, mic: Mic, turn: int) -> TurnRecord:
        """Ask for a long reply, let it play for a moment, then speak over it."""
        asked = clock()
        item = {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": LONG_REQUEST}],
        }
        await line.ws.send(json.dumps({"type": "conversation.item.create", "item": item}))
        await line.ws.send(json.dumps({"type": "response.create"}))
        found: list[Reply] = []

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
