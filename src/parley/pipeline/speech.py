"""Speech in and out of whole texts and recordings: the stages that the conversation and the
REST endpoints share, so that neither keeps a copy of its own.

- Out: :func:`speak` synthesises clauses in turn as they arrive (the conversation feeds it the
  LLM's clauses while the LLM is still writing; ``/v1/audio/speech`` feeds it
  :func:`clauses_of` a whole text) and says where each clause's audio ends (:class:`Spoken`), so
  that a reply cut off by the listener can be truncated to what was heard.
- In: :func:`transcribe_recording` cuts a recording into utterances with the VAD and recognises
  each on its own, reading the recording block by block as it goes: memory holds one block and
  the utterance being cut, never the recording (a 24-minute upload of silence costs a block).

This module neither knows a wire nor decodes files: callers hand it clauses and frames.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Iterable, Iterator
from dataclasses import dataclass, replace

from parley.audio.frames import Frame
from parley.audio.resample import StreamResampler, resample
from parley.engines.base import ASR, TTS, VAD, SpeechOptions, Word
from parley.pipeline.segmenter import ClauseSegmenter
from parley.pipeline.segments import Utterance, UtteranceCutter

__all__ = [
    "TAIL_PADDING_MS",
    "Recognised",
    "RecordingEnd",
    "Spoken",
    "clauses_of",
    "speak",
    "speak_text",
    "transcribe_recording",
]

TAIL_PADDING_MS = 200
"""Audio kept after each utterance's last voiced window, so the recogniser hears whole words."""


# --- Out: text -> speech ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Spoken:
    """Marks the end of one clause's audio in a :func:`speak` stream."""

    clause: str
    start: int
    """First sample of the clause (at the output rate), counted from the stream's start."""
    end: int
    """One past its last sample."""


async def speak(
    tts: TTS, clauses: AsyncIterable[str], options: SpeechOptions
) -> AsyncGenerator[Frame | Spoken, None]:
    """Each of ``clauses`` synthesised in turn: its non-empty frames as they come, then its
    :class:`Spoken`. A clause after the first audio is a continuation of the stream (a batched
    engine serves the first clause of other streams before it). Closing the generator closes
    the engine's stream at once."""
    start = 0
    async for clause in clauses:
        opts = replace(options, continuation=start > 0)
        end = start
        async with contextlib.aclosing(tts.synthesize(clause, opts)) as frames:
            async for frame in frames:
                if len(frame):
                    end += len(frame)
                    yield frame
        yield Spoken(clause, start, end)
        start = end


def clauses_of(text: str) -> list[str]:
    """A whole text cut as :class:`ClauseSegmenter` cuts an LLM's stream (the first clause
    early, so its audio starts soon)."""
    segmenter = ClauseSegmenter()
    clauses = segmenter.push(text)
    rest = segmenter.flush()
    return [*clauses, rest] if rest else clauses


async def speak_text(
    tts: TTS, text: str, options: SpeechOptions
) -> AsyncGenerator[Frame | Spoken, None]:
    """:func:`speak` over :func:`clauses_of` ``text``."""

    async def each() -> AsyncGenerator[str, None]:
        for clause in clauses_of(text):
            yield clause

    async with contextlib.aclosing(speak(tts, each(), options)) as out:
        async for item in out:
            yield item


# --- In: recording -> text -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recognised:
    """One recognised utterance of a recording; times in seconds from the recording's start
    (its words' too), rounded to the millisecond."""

    start_s: float
    end_s: float
    text: str
    words: tuple[Word, ...]


@dataclass(frozen=True, slots=True)
class RecordingEnd:
    """The last item of :func:`transcribe_recording`: the recording has been read whole."""

    duration_s: float


async def transcribe_recording(
    recording: Iterable[Frame],
    vad: VAD,
    asr: ASR,
    *,
    language: str | None = None,
    threshold: float = 0.5,
    silence_duration_ms: int = 500,
    prefix_padding_ms: int = 300,
    tail_padding_ms: int = TAIL_PADDING_MS,
) -> AsyncGenerator[Recognised | RecordingEnd, None]:
    """The utterances of ``recording``, recognised one by one as the VAD finds them, then a
    :class:`RecordingEnd`. No speech gives no :class:`Recognised`; an utterance recognised as
    empty text is left out.

    ``recording`` is a blocking iterable of mono frames at one rate (a decoder): each block is
    read and resampled for the VAD in a worker thread, so the event loop only schedules. Each
    utterance keeps ``prefix_padding_ms`` before its first voiced window and ``tail_padding_ms``
    after its last (utterances whose padding meets are joined), as the Realtime API pads a turn.
    """
    blocks = iter(recording)
    rate = vad.sample_rate
    cutter = UtteranceCutter(
        vad,
        threshold=threshold,
        silence_duration_ms=silence_duration_ms,
        prefix_padding_ms=prefix_padding_ms,
        tail_padding_ms=tail_padding_ms,
    )
    reader = _Reader(blocks, rate)
    while (frame := await _next_block(reader)) is not None:
        for utterance in await cutter.feed(frame):
            if (piece := await _recognise(asr, utterance, rate, language)) is not None:
                yield piece
    for utterance in cutter.finish():
        if (piece := await _recognise(asr, utterance, rate, language)) is not None:
            yield piece
    yield RecordingEnd(reader.duration_s)


class _Reader:
    """Reads the recording's blocks and resamples them for the VAD (blocking: a thread's job)."""

    __slots__ = ("_blocks", "_read", "_resampler", "rate")

    def __init__(self, blocks: Iterator[Frame], rate: int) -> None:
        self._blocks: Iterator[Frame] | None = blocks
        self._resampler: StreamResampler | None = None
        self._read = 0  # samples at the recording's own rate (a float sum would drift)
        self.rate = rate

    @property
    def duration_s(self) -> float:
        return self._read / self._resampler.in_rate if self._resampler is not None else 0.0

    def next(self) -> Frame | None:
        """The next block at ``rate``; the resampler's tail once; then None."""
        if self._blocks is None:
            return None
        block = next(self._blocks, None)
        if block is None:
            self._blocks = None
            tail = self._resampler.flush() if self._resampler is not None else None
            return Frame(tail, self.rate) if tail is not None and len(tail) else None
        if self._resampler is None:
            self._resampler = StreamResampler(block.sample_rate, self.rate)
        self._read += len(block)
        return self._resampler.frame(block)


async def _next_block(reader: _Reader) -> Frame | None:
    # The decoder cannot be interrupted mid-block: a cancelled read lets its thread finish
    # (milliseconds) before the cancellation goes on, so that whoever closes the decoder next
    # never closes it under a running decode.
    read = asyncio.ensure_future(asyncio.to_thread(reader.next))
    try:
        return await asyncio.shield(read)
    except asyncio.CancelledError:
        await asyncio.wait([read])
        raise


async def _recognise(
    asr: ASR, utterance: Utterance, rate: int, language: str | None
) -> Recognised | None:
    audio = utterance.audio
    if audio.sample_rate != asr.sample_rate:
        audio = await asyncio.to_thread(resample, audio, asr.sample_rate)
    result = await asr.transcribe(audio, language=language)
    text = result.text.strip()
    if not text:
        return None
    offset = utterance.start / rate
    words = tuple(
        Word(w.text, round(offset + w.start_s, 3), round(offset + w.end_s, 3), w.confidence)
        for w in result.words
    )
    return Recognised(round(offset, 3), round(offset + audio.duration_s, 3), text, words)
