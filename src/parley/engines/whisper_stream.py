"""A Whisper stream's bookkeeping: the current window's audio, frames, and finished decodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

import numpy as np

from parley.audio.frames import Float32, Frame
from parley.engines.batching import RequestAborted

__all__ = [
    "WINDOW_SAMPLES",
    "Agreement",
    "Utterance",
    "join",
    "next_frame",
    "partial_text",
    "reusable",
]

WINDOW_SAMPLES = 30 * 16000


class Utterance:
    """The audio of the current (not yet full) 30 s window."""

    __slots__ = ("_parts", "samples")

    def __init__(self) -> None:
        self._parts: list[Float32] = []
        self.samples = 0

    def add(self, samples: Float32) -> list[Float32]:
        """Append ``samples``; return the windows that they filled (usually none)."""
        full: list[Float32] = []
        while len(samples):
            take = min(len(samples), WINDOW_SAMPLES - self.samples)
            self._parts.append(samples[:take])
            self.samples += take
            samples = samples[take:]
            if self.samples == WINDOW_SAMPLES:
                full.append(self.current())
                self._parts = []
                self.samples = 0
        return full

    def current(self) -> Float32:
        if len(self._parts) > 1:
            self._parts = [np.concatenate(self._parts)]
        return self._parts[0] if self._parts else np.zeros(0, np.float32)


async def next_frame(frames: AsyncIterator[Frame]) -> Frame | None:
    """The next frame (empty: a pause mark); None at the end (a task cannot end in
    StopAsyncIteration)."""
    async for frame in frames:
        return frame
    return None


def reusable(latest: tuple[int, asyncio.Task[str]] | None, total: int) -> bool:
    """Whether ``latest`` decodes the stream's first ``total`` samples and has not failed."""
    if latest is None or latest[0] != total:
        return False
    task = latest[1]
    return not task.done() or (not task.cancelled() and task.exception() is None)


def partial_text(partial: asyncio.Task[str], windows: Sequence[asyncio.Task[str]]) -> str:
    """A finished partial's text after the texts of the windows decoded so far; "" if aborted."""
    if partial.cancelled():
        return ""
    try:
        text = partial.result()
    except RequestAborted:
        return ""
    before = []
    for window in windows:
        if not window.done() or window.cancelled() or window.exception() is not None:
            break
        before.append(window.result())
    return join([*before, text])


def join(texts: Sequence[str]) -> str:
    return " ".join(t for t in texts if t)


class Agreement:
    """Local agreement over partial hypotheses: what two consecutive ones agree on.

    :meth:`update` takes each new partial text and returns the text to show, or None when
    nothing new is agreed: the longest word prefix that this hypothesis and the one before share
    (compared without case and edge punctuation), as long as it extends what was shown before.
    What it returns only grows, so text deltas computed from it are append-only.
    """

    __slots__ = ("_previous", "shown")

    def __init__(self) -> None:
        self._previous: list[str] = []
        self.shown: list[str] = []

    def update(self, text: str) -> str | None:
        words = text.split()
        keys = [_key(w) for w in words]
        agreed = 0
        for a, b in zip(self._previous, keys, strict=False):
            if a != b:
                break
            agreed += 1
        self._previous = keys
        n = len(self.shown)
        if agreed <= n or [_key(w) for w in self.shown] != keys[:n]:
            return None
        self.shown = [*self.shown, *words[n:agreed]]
        return " ".join(self.shown)


def _key(word: str) -> str:
    return word.strip(".,!?;:\"'()").lower()
