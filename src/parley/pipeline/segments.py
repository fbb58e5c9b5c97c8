"""Where the speech is in a whole recording: VAD + the turn detector, offline.

Used to refuse recordings with no speech (a recogniser will happily hallucinate words in
silence) and to cut long files into utterances before recognition.
"""

from __future__ import annotations

from dataclasses import dataclass

from parley.audio.frames import Frame
from parley.audio.resample import resample
from parley.engines.base import VAD
from parley.pipeline.turns import TurnDetector

__all__ = ["SpeechSegment", "find_speech"]


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    start_ms: float
    end_ms: float


async def find_speech(
    vad: VAD, recording: Frame, *, threshold: float = 0.5, silence_duration_ms: int = 500
) -> list[SpeechSegment]:
    """The speech segments of ``recording`` (positions in ms from its start)."""
    stream = vad.open_stream()
    audio = resample(recording, vad.sample_rate)
    detector = TurnDetector(threshold=threshold, silence_duration_ms=silence_duration_ms)
    window_ms = 1000.0 * stream.window_samples / vad.sample_rate
    segments: list[SpeechSegment] = []
    start: float | None = None
    for i, probability in enumerate(await stream.probabilities(audio)):
        edge = detector.feed(probability, i * window_ms, (i + 1) * window_ms)
        if edge is None:
            continue
        if edge.started:
            start = edge.at_ms
        elif start is not None:
            segments.append(SpeechSegment(start, edge.at_ms))
            start = None
    edge = detector.force_stop()
    if edge is not None and start is not None:
        segments.append(SpeechSegment(start, edge.at_ms))
    return segments
