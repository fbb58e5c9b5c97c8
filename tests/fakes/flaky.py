"""Engine doubles that fail on cue: raise before or after their first item, or hang.

For the failover tests: each satisfies its engine Protocol, counts its calls and how often its
stream was closed, and fails the way it is told. A ``hang_after`` stream waits until it is
closed or cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from parley.audio.frames import Frame
from parley.engines.base import (
    ChatRequest,
    Finish,
    LLMEvent,
    SpeechOptions,
    TextDelta,
    Transcript,
    Usage,
    Voice,
)


async def _hang() -> None:
    await asyncio.Event().wait()


@dataclass
class FlakyLLM:
    """Streams ``reply``; raises ``error`` after ``error_after`` pieces, or hangs after
    ``hang_after`` pieces."""

    name: str = "flaky-llm"
    reply: tuple[str, ...] = ("Hello", " there.")
    error: Exception | None = None
    error_after: int = 0
    hang_after: int | None = None
    supports_vision: bool = False
    calls: int = 0
    closed: int = 0

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        self.calls += 1
        try:
            for i, piece in enumerate((*self.reply, None)):
                if self.hang_after == i:
                    await _hang()
                if self.error is not None and self.error_after == i:
                    raise self.error
                if piece is None:
                    break
                await asyncio.sleep(0)
                yield TextDelta(piece)
            yield Usage(3, len(self.reply))
            yield Finish("stop")
        finally:
            self.closed += 1


@dataclass
class FlakyTTS:
    """``frames`` frames of 20 ms per clause; fails or hangs as :class:`FlakyLLM` does."""

    name: str = "flaky-tts"
    frames: int = 3
    error: Exception | None = None
    error_after: int = 0
    hang_after: int | None = None
    texts: list[str] = field(default_factory=list)
    closed: int = 0

    def voices(self) -> Sequence[Voice]:
        return [Voice(f"{self.name}-voice", self.name, "en")]

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        self.texts.append(text)
        try:
            for i in range(self.frames + 1):
                if self.hang_after == i:
                    await _hang()
                if self.error is not None and self.error_after == i:
                    raise self.error
                if i == self.frames:
                    break
                await asyncio.sleep(0)
                yield Frame(np.full(options.sample_rate // 50, 100, np.int16), options.sample_rate)
        finally:
            self.closed += 1


@dataclass
class FlakyASR:
    """Records the length of every frame it hears; raises ``error`` after hearing
    ``error_after`` frames (before its final), or at the end of the audio when that comes
    first. ``own_reader``: reads the audio from a task of its own (as ``WhisperASR`` does) and
    cancels that task when it stops, so that it fails while a read is waiting for audio.
    ``hang_at_end``: never says its final."""

    name: str = "flaky-asr"
    sample_rate: int = 16000
    text: str = "hello parley"
    error: Exception | None = None
    error_after: int | None = None
    own_reader: bool = False
    hang_at_end: bool = False
    frames: list[int] = field(default_factory=list)
    rates: set[int] = field(default_factory=set)
    closed: int = 0

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        frames = aiter(audio)
        reader: asyncio.Task[Frame | None] | None = None
        try:
            while True:
                failing = self.error is not None and self.error_after == len(self.frames)
                if self.own_reader:
                    reader = asyncio.create_task(_next(frames))
                    if failing and self.error is not None:
                        await asyncio.sleep(0.01)  # the reader is waiting for audio now
                        raise self.error
                    frame = await reader
                    reader = None
                else:
                    if failing and self.error is not None:
                        raise self.error
                    frame = await _next(frames)
                if frame is None:
                    break
                self.frames.append(len(frame))
                self.rates.add(frame.sample_rate)
                if partials and len(frame):
                    yield Transcript(self.text[: len(self.frames)], is_final=False)
            if self.error is not None:
                raise self.error
            if self.hang_at_end:
                await _hang()
            yield Transcript(self.text, is_final=True)
        finally:
            if reader is not None:
                reader.cancel()
            self.closed += 1

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        self.frames.append(len(audio))
        if self.error is not None:
            raise self.error
        if self.hang_at_end:
            await _hang()
        return Transcript(self.text, is_final=True)


async def _next(frames: AsyncIterable[Frame]) -> Frame | None:
    try:
        return await anext(aiter(frames))
    except StopAsyncIteration:
        return None
