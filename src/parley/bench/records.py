"""What ``parley bench realtime`` is told and what it records: the run's configuration, each
turn as a caller heard it, and the playback buffer a caller would have played the reply through.

Plain data and one pure function: nothing here opens a socket or reads a clock.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "REPLY_TIMEOUT_S",
    "BargeIn",
    "BenchConfig",
    "Playback",
    "TurnRecord",
    "simulate_playback",
]

REPLY_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class BenchConfig:
    url: str
    levels: tuple[int, ...]
    turns: int
    silence_ms: int = 500
    # semantic_vad at this eagerness instead of server_vad (no fixed silence window: the gap
    # is judged whole, silence_ms is 0).
    semantic: str | None = None
    slo_p95_ms: float = 500.0
    barge_in: bool = False
    seed: int = 0
    keep_going: bool = False
    reply_timeout_s: float = REPLY_TIMEOUT_S
    api_key: str | None = field(default=None, repr=False)  # never written to the result

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


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
