"""Memory goes back to the system after sessions end; VAD models go back to their pool."""

from __future__ import annotations

import asyncio

import numpy as np

from parley.audio.frames import Frame
from parley.engines.instrumented import InstrumentedVAD
from parley.engines.silero import SileroVAD
from parley.server.memory import Trimmer


async def test_trimmer_trims_once_after_a_burst_of_ended_sessions() -> None:
    trims: list[float] = []
    trimmer = Trimmer(delay_s=0.5, interval_s=0.1, trim=lambda: trims.append(0.0))
    for _ in range(10):  # a storm's sessions end over a while: no trim until they stop
        for _ in range(10):
            trimmer.session_ended()
        await asyncio.sleep(0.02)
    assert trims == []
    await asyncio.sleep(1.5)
    assert len(trims) == 1
    trimmer.session_ended()  # later sessions: another trim
    await asyncio.sleep(1.5)
    assert len(trims) == 2
    await trimmer.aclose()


def test_trimmer_trims_the_heap_here() -> None:
    from parley.server.memory import _malloc_trim

    trim = _malloc_trim()
    assert trim is not None  # glibc: the CI machines and the servers parley runs on
    trim()


async def test_instrumented_vad_stream_gives_its_model_back_on_close() -> None:
    silero = SileroVAD(warm=1)
    vad = InstrumentedVAD(silero, lambda *a: None, lambda *a: None)
    stream = vad.open_stream()
    await stream.probabilities(Frame(np.zeros(512, np.int16), 16000))
    assert silero.idle == 0
    stream.close()  # type: ignore[attr-defined]
    assert silero.idle == 1  # back at once, not when a garbage collection finds the session
