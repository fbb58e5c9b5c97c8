"""Checks shared by the clause-batched TTS engines' tests (VITS and Piper).

Both engines are :class:`~parley.engines.vits.ClauseBatchedTTS`: the same scheduler, worker
thread and synthesize loop. These helpers look at the scheduler's private state because it
has no public event to wait on.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing, asynccontextmanager

import numpy as np

from parley.audio.frames import Frame
from parley.engines.base import SpeechOptions
from parley.engines.vits import ClauseBatchedTTS


async def speak(tts: ClauseBatchedTTS, text: str, options: SpeechOptions) -> list[Frame]:
    async with aclosing(tts.synthesize(text, options)) as frames:
        return [f async for f in frames]


def samples(frames: list[Frame]) -> np.ndarray:
    return np.concatenate([f.samples for f in frames]) if frames else np.zeros(0, np.int16)


def queued(tts: ClauseBatchedTTS) -> int:
    # The scheduler's batcher is made afresh in each event loop: look it up each time.
    return tts.scheduler._batcher.queued


async def until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Poll ``condition`` (scheduler state, which has no event to wait on)."""
    async with asyncio.timeout(timeout_s):
        while True:
            if condition():
                return
            await asyncio.sleep(0.005)


@asynccontextmanager
async def engine_busy(tts: ClauseBatchedTTS) -> AsyncIterator[None]:
    """Hold the engine with a batch that cannot finish, so that new requests stay queued."""
    release = threading.Event()
    tts._worker.submit(release.wait)
    blocker = asyncio.create_task(speak(tts, "busy", SpeechOptions(stream="busy")))
    try:
        await until(lambda: tts.scheduler._batcher.running is not None)
        yield
    finally:
        release.set()
        await blocker


async def check_first_clause_goes_ahead(tts: ClauseBatchedTTS) -> None:
    """With ``max_batch_size=2``: a first clause overtakes three queued continuations."""
    done: list[str] = []

    async def clause(name: str, options: SpeechOptions) -> None:
        await speak(tts, name.replace("-", " "), options)
        done.append(name)

    tasks = []
    async with engine_busy(tts):
        # Three streams' later clauses queue up behind the running batch, then a first clause.
        for i in range(3):
            options = SpeechOptions(stream=f"a{i}", continuation=True)
            tasks.append(asyncio.create_task(clause(f"later-{i}", options)))
            await until(lambda n=i: queued(tts) == n + 1)
        tasks.append(asyncio.create_task(clause("first", SpeechOptions(stream="b"))))
        await until(lambda: queued(tts) == 4)
    await asyncio.gather(*tasks)
    # Batches of two: [first, later-0], then [later-1, later-2]. Without priority, sessions
    # taking turns in arrival order, it would be [later-0, later-1], then [later-2, first].
    assert done.index("first") < min(done.index("later-1"), done.index("later-2"))
    assert tts.scheduler.stats.recent_sizes == (1, 2, 2)
