"""Where the speech is in a recording: VAD + the turn detector, offline.

Used to refuse recordings with no speech (a recogniser will happily hallucinate words in
silence) and to cut long files into utterances before recognition. :func:`find_speech` scores a
whole recording at once; :class:`UtteranceCutter` cuts one that arrives block by block and keeps
only the audio that may still belong to an utterance, so that its memory does not grow with the
recording (:func:`parley.pipeline.speech.transcribe_recording` is built on it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from parley.audio.frames import PCM16, Frame
from parley.audio.resample import resample
from parley.engines.base import VAD
from parley.pipeline.turns import SpeechEdge, TurnDetector

__all__ = ["SpeechSegment", "Utterance", "UtteranceCutter", "find_speech"]


@dataclass(frozen=True, slots=True)
class SpeechSegment:
    start_ms: float
    end_ms: float


@dataclass(frozen=True, slots=True)
class Utterance:
    """One stretch of speech cut from a stream, with its padding."""

    start: int
    """Its first sample, counted from the stream's start."""
    audio: Frame


class _Edges:
    """A VAD stream and a turn detector: audio in, speech edges out (in ms of the stream)."""

    __slots__ = ("_detector", "_stream", "_window_ms", "window_samples", "windows")

    def __init__(self, vad: VAD, threshold: float, silence_duration_ms: int) -> None:
        self._stream = vad.open_stream()
        self._detector = TurnDetector(threshold=threshold, silence_duration_ms=silence_duration_ms)
        self.window_samples = self._stream.window_samples
        self._window_ms = 1000.0 * self.window_samples / vad.sample_rate
        self.windows = 0
        """Windows scored so far."""

    async def feed(self, audio: Frame) -> list[SpeechEdge]:
        edges = []
        for probability in await self._stream.probabilities(audio):
            i = self.windows
            self.windows += 1
            edge = self._detector.feed(probability, i * self._window_ms, (i + 1) * self._window_ms)
            if edge is not None:
                edges.append(edge)
        return edges

    def finish(self) -> SpeechEdge | None:
        return self._detector.force_stop()


async def find_speech(
    vad: VAD, recording: Frame, *, threshold: float = 0.5, silence_duration_ms: int = 500
) -> list[SpeechSegment]:
    """The speech segments of ``recording`` (positions in ms from its start)."""
    edges = _Edges(vad, threshold, silence_duration_ms)
    found = await edges.feed(resample(recording, vad.sample_rate))
    if (last := edges.finish()) is not None:
        found.append(last)
    segments: list[SpeechSegment] = []
    start: float | None = None
    for edge in found:
        if edge.started:
            start = edge.at_ms
        elif start is not None:
            segments.append(SpeechSegment(start, edge.at_ms))
            start = None
    return segments


@dataclass(slots=True)
class _Span:
    start: int
    end: int | None  # None while the speech goes on


class UtteranceCutter:
    """Cuts a stream of audio at the VAD's rate into utterances as the VAD finds them.

    Each utterance runs from ``prefix_padding_ms`` before its first voiced window to
    ``tail_padding_ms`` after its last; utterances whose padding meets are one. An utterance is
    handed out once no later speech can join it. Between utterances only the last
    ``prefix_padding_ms`` (and the block being scored) are kept.
    """

    __slots__ = ("_chunks", "_edges", "_pos", "_prefix", "_rate", "_spans", "_tail")

    def __init__(
        self,
        vad: VAD,
        *,
        threshold: float = 0.5,
        silence_duration_ms: int = 500,
        prefix_padding_ms: int = 300,
        tail_padding_ms: int = 200,
    ) -> None:
        self._rate = vad.sample_rate
        self._edges = _Edges(vad, threshold, silence_duration_ms)
        self._prefix = round(prefix_padding_ms * self._rate / 1000)
        self._tail = round(tail_padding_ms * self._rate / 1000)
        self._chunks: list[tuple[int, PCM16]] = []  # (first sample, samples), in order
        self._pos = 0  # samples fed
        self._spans: list[_Span] = []

    async def feed(self, audio: Frame) -> list[Utterance]:
        """``audio`` (the stream's next samples at the VAD's rate); the utterances it ends."""
        if audio.sample_rate != self._rate:
            raise ValueError(f"audio at {audio.sample_rate} Hz fed to a {self._rate} Hz cutter")
        if len(audio):
            self._chunks.append((self._pos, audio.samples))
            self._pos += len(audio)
        for edge in await self._edges.feed(audio):
            self._on_edge(edge)
        # A later start lies at or after the first unscored window, and reaches back at most
        # ``prefix`` before it: a span that ends before that can no longer be joined.
        horizon = self._edges.windows * self._edges.window_samples - self._prefix
        done = []
        while self._spans and (end := self._spans[0].end) is not None and end < horizon:
            done.append(self._cut(self._spans.pop(0)))
        keep = min([horizon, *(span.start for span in self._spans)])
        while self._chunks and self._chunks[0][0] + len(self._chunks[0][1]) <= keep:
            self._chunks.pop(0)
        return done

    def finish(self) -> list[Utterance]:
        """The end of the stream: the utterances still open or waiting."""
        if (edge := self._edges.finish()) is not None:
            self._on_edge(edge)
        done = [self._cut(span) for span in self._spans]
        self._spans.clear()
        self._chunks.clear()
        return [u for u in done if len(u.audio)]

    def _on_edge(self, edge: SpeechEdge) -> None:
        at = round(edge.at_ms * self._rate / 1000)
        if edge.started:
            start = max(0, at - self._prefix)
            last = self._spans[-1] if self._spans else None
            if last is not None and last.end is not None and start <= last.end:
                last.end = None  # the padding meets the last utterance's: one utterance
            else:
                self._spans.append(_Span(start, None))
        elif self._spans and self._spans[-1].end is None:
            self._spans[-1].end = at + self._tail

    def _cut(self, span: _Span) -> Utterance:
        start = span.start
        end = self._pos if span.end is None else min(span.end, self._pos)
        parts = [
            samples[max(0, start - first) : max(0, end - first)]
            for first, samples in self._chunks
            if first < end and first + len(samples) > start
        ]
        audio = np.concatenate(parts) if parts else np.zeros(0, np.int16)
        return Utterance(start, Frame(audio, self._rate))
