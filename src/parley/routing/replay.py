"""The caller's audio for an ASR chain: read once, kept, and played again to a second engine.

:class:`AudioTape` reads frames from the caller's audio only as an engine asks for them, keeps
what it has read (up to a bound, then nothing: a replay must be whole), and plays the kept
frames and then the live audio to each engine in turn, resampled to the engine's rate. It knows
nothing of engines failing; :mod:`parley.routing.failover` decides when to play it again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Callable

import numpy as np

from parley.audio.frames import Frame
from parley.audio.resample import StreamResampler

__all__ = ["AudioTape", "Timer"]

Timer = Callable[[float], contextlib.AbstractAsyncContextManager[asyncio.Timeout]]
"""Given an attempt's start (loop time), the deadline for one wait of the attempt."""


async def _pull(frames: AsyncIterator[Frame]) -> Frame | None:
    try:
        return await anext(frames)
    except StopAsyncIteration:
        return None


class AudioTape:
    """The caller's audio, read once and kept, so that a second engine can hear it again.

    Each read runs as its own task awaited through ``asyncio.shield``: an engine that reads
    its audio from a task of its own and cancels it when it fails must not cancel the read
    (which would end the caller's audio generator); the next engine takes the read over. Only
    the latest player reads: one left behind by a failed engine ends.
    """

    def __init__(self, audio: AsyncIterable[Frame], max_kept_s: float) -> None:
        self._source = aiter(audio)
        self._kept: list[Frame] = []
        self._kept_s = 0.0
        self._max_kept_s = max_kept_s
        self._read: asyncio.Task[Frame | None] | None = None
        self._player = 0
        self.complete = True  # every frame read so far is kept
        self.source_error: Exception | None = None  # the caller's audio failed: no engine's fault
        self.ended_at: float | None = None  # loop time the audio ended
        self._waiting: asyncio.Timeout | None = None
        self._timeout_s: float | None = None

    async def play(self, rate: int) -> AsyncGenerator[Frame, None]:
        """The kept frames, then the live audio, at ``rate``."""
        self._player += 1
        player = self._player
        resampler: StreamResampler | None = None
        kept = tuple(self._kept)
        i = 0
        while True:
            if i < len(kept):
                frame: Frame | None = kept[i]
                i += 1
            else:
                frame = await self._next(player)
            if frame is None or not len(frame):
                # The end or a pause mark: what the resampler holds comes first.
                if resampler is not None and len(tail := resampler.flush()):
                    yield Frame(tail, rate)
                resampler = None
                if frame is None:
                    return
                yield Frame(frame.samples, rate)
                continue
            if frame.sample_rate == rate and resampler is None:
                yield frame
                continue
            if resampler is None or resampler.in_rate != frame.sample_rate:
                tail = resampler.flush() if resampler is not None else np.zeros(0, np.int16)
                resampler = StreamResampler(frame.sample_rate, rate)
                samples = np.concatenate([tail, resampler.process(frame.samples)])
            else:
                samples = resampler.process(frame.samples)
            if len(samples):
                yield Frame(samples, rate)

    async def _next(self, player: int) -> Frame | None:
        if self.ended_at is not None or player != self._player:
            return None
        if self._read is None:
            self._read = asyncio.create_task(_pull(self._source))
        try:
            frame = await asyncio.shield(self._read)
        except Exception as exc:
            if self._read.done():
                self.source_error = exc
            raise
        if player != self._player:
            return None  # the read is the latest player's
        self._read = None
        if frame is None:
            self.ended_at = asyncio.get_running_loop().time()
            if self._waiting is not None and self._timeout_s is not None:
                self._waiting.reschedule(self.ended_at + self._timeout_s)
            return None
        if self.complete:
            self._kept_s += frame.duration_s
            if self._kept_s <= self._max_kept_s:
                self._kept.append(frame)
            else:
                self.complete, self._kept = False, []
        return frame

    def timer(self, timeout_s: float | None) -> Timer:
        """Waits unbounded while the audio flows, at most ``timeout_s`` once it has ended."""

        @contextlib.asynccontextmanager
        async def wait(started: float) -> AsyncIterator[asyncio.Timeout]:
            if timeout_s is None:
                async with asyncio.timeout(None) as timeout:
                    yield timeout
                return
            when = None if self.ended_at is None else max(started, self.ended_at) + timeout_s
            async with asyncio.timeout_at(when) as timeout:
                self._waiting, self._timeout_s = timeout, timeout_s
                try:
                    yield timeout
                finally:
                    self._waiting = None

        return wait

    def close(self) -> None:
        if self._read is not None:
            self._read.cancel()
            self._read = None
