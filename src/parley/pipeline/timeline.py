"""One clock per turn: monotonic timestamps of each stage and the durations between them.

Every consumer of latency (the CLI, logs, metrics, the Realtime usage, benchmarks) reads a
:class:`TurnTimeline`; none keeps its own clock. Timestamps are ``time.perf_counter_ns()``.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["MARKS", "STAGES", "Mark", "TurnTimeline"]

Mark = Literal[
    "last_voiced",
    "end_of_turn",
    "asr_final",
    "llm_first_token",
    "tts_first_audio",
    "first_audio_out",
]
MARKS: tuple[Mark, ...] = (
    "last_voiced",
    "end_of_turn",
    "asr_final",
    "llm_first_token",
    "tts_first_audio",
    "first_audio_out",
)
# (stage name, from mark, to mark): what each stage of a turn took.
STAGES: tuple[tuple[str, Mark, Mark], ...] = (
    ("endpointing", "last_voiced", "end_of_turn"),
    ("asr_final", "end_of_turn", "asr_final"),
    ("llm_first_token", "asr_final", "llm_first_token"),
    ("tts_first_audio", "llm_first_token", "tts_first_audio"),
    ("send", "tts_first_audio", "first_audio_out"),
)


@dataclass(slots=True)
class TurnTimeline:
    """Marks of one turn, each set once (the first mark wins)."""

    marks: dict[Mark, int] = field(default_factory=dict)

    def mark(self, name: Mark, at_ns: int | None = None) -> None:
        if name not in self.marks:
            self.marks[name] = time.perf_counter_ns() if at_ns is None else at_ns

    def ms(self, start: Mark, end: Mark) -> float | None:
        if start in self.marks and end in self.marks:
            return (self.marks[end] - self.marks[start]) / 1e6
        return None

    def stages(self) -> dict[str, float]:
        """Durations in ms of each stage whose two marks are set."""
        out: dict[str, float] = {}
        for name, start, end in STAGES:
            value = self.ms(start, end)
            if value is not None:
                out[name] = value
        return out

    @property
    def response_latency_ms(self) -> float | None:
        """End of turn decided -> first reply audio out: what parley itself adds."""
        return self.ms("end_of_turn", "first_audio_out")

    @property
    def turn_gap_ms(self) -> float | None:
        """Last voiced sample -> first reply audio out, endpointing wait included."""
        return self.ms("last_voiced", "first_audio_out")

    def is_monotone(self) -> bool:
        present = [self.marks[m] for m in MARKS if m in self.marks]
        return all(a <= b for a, b in itertools.pairwise(present))

    def to_dict(self) -> dict[str, object]:
        origin = self.marks.get("last_voiced", min(self.marks.values(), default=0))
        return {
            "marks_ms": {m: (self.marks[m] - origin) / 1e6 for m in MARKS if m in self.marks},
            "stages_ms": self.stages(),
            "response_latency_ms": self.response_latency_ms,
            "turn_gap_ms": self.turn_gap_ms,
        }
