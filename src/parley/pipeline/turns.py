"""Turn detection with the semantics of OpenAI's ``server_vad``.

:class:`TurnDetector` is pure bookkeeping: it takes one VAD probability per window and the
window's position in the input stream, and says when speech starts and stops. Speech starts at
the first window at or above ``threshold``; it stops once ``silence_duration_ms`` of windows fall
below a lower threshold (hysteresis, so a word's soft tail does not end a turn). Positions are
milliseconds of input audio since the session started, as the Realtime API reports them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["SpeechEdge", "TurnDetector", "TurnState"]

# Silero's own streaming helper ends speech 0.15 below the start threshold.
HYSTERESIS = 0.15


class TurnState(enum.Enum):
    SILENCE = "silence"
    SPEECH = "speech"


@dataclass(frozen=True, slots=True)
class SpeechEdge:
    """Speech started (``started``) or stopped; ``at_ms`` is the edge in input time."""

    started: bool
    at_ms: float


class TurnDetector:
    __slots__ = (
        "_last_voiced_end_ms",
        "_silence_ms",
        "silence_duration_ms",
        "state",
        "threshold",
    )

    def __init__(self, *, threshold: float = 0.5, silence_duration_ms: int = 500):
        self.threshold = threshold
        self.silence_duration_ms = silence_duration_ms
        self.state = TurnState.SILENCE
        self._silence_ms = 0.0
        self._last_voiced_end_ms = 0.0

    @property
    def low_threshold(self) -> float:
        return max(self.threshold - HYSTERESIS, 0.01)

    @property
    def silence_ms(self) -> float:
        """How long the current turn has been silent (0 while voiced or between turns)."""
        return self._silence_ms

    def feed(self, probability: float, start_ms: float, end_ms: float) -> SpeechEdge | None:
        """One window's probability; returns the edge it causes, if any."""
        match self.state:
            case TurnState.SILENCE:
                if probability >= self.threshold:
                    self.state = TurnState.SPEECH
                    self._silence_ms = 0.0
                    self._last_voiced_end_ms = end_ms
                    return SpeechEdge(True, start_ms)
            case TurnState.SPEECH:
                if probability >= self.low_threshold:
                    self._silence_ms = 0.0
                    self._last_voiced_end_ms = end_ms
                else:
                    self._silence_ms += end_ms - start_ms
                    if self._silence_ms >= self.silence_duration_ms:
                        return self.force_stop()
        return None

    def force_stop(self) -> SpeechEdge | None:
        """End the current turn now (end of input, or a manual commit)."""
        if self.state is not TurnState.SPEECH:
            return None
        self.state = TurnState.SILENCE
        self._silence_ms = 0.0
        return SpeechEdge(False, self._last_voiced_end_ms)
