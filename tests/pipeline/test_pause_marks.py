"""The listener tells the recogniser where the caller went quiet (a pause mark: an empty
frame, once per silent stretch) and whether anyone reads partial transcripts."""

from __future__ import annotations

import asyncio

from parley.audio.frames import Frame
from parley.pipeline import Pipeline
from tests.fakes.engines import FakeScriptedASR, fake_engines, fake_settings, silence, tone


async def _run(asr: FakeScriptedASR, frames: list[Frame], *, partials: bool = True) -> Pipeline:
    base, *_ = fake_engines()
    engines = type(base)(vad=base.vad, asr=asr, llm=base.llm, tts=base.tts)
    p = Pipeline(engines, fake_settings(silence_duration_ms=500), auto_respond=False)
    p.listener.partials = partials
    async with p:
        for frame in frames:
            for i in range(0, len(frame), 320):  # 20 ms packets
                await p.push(Frame(frame.samples[i : i + 320], 16000))
                await asyncio.sleep(0)
        await p.end_of_input()
    return p


async def test_a_pause_mark_once_per_silent_stretch_in_its_place() -> None:
    asr = FakeScriptedASR()
    # Speech, a 350 ms pause (past the 200 ms the recogniser hears, short of the 500 ms
    # window), speech again, then the silence that ends the turn.
    await _run(asr, [tone(800), silence(350), tone(600), silence(1000)])
    marks = [i for i, n in enumerate(asr.frames) if n == 0]
    assert len(marks) == 2, asr.frames
    # The first pause's mark lies between audio; the last comes after all of it.
    assert 0 < marks[0] < len(asr.frames) - 1 and sum(asr.frames[marks[0] :]) > 0
    assert marks[1] == len(asr.frames) - 1
    # Before the first mark: the speech and ~200 ms of the pause (plus the VAD's lag).
    assert 16000 * 0.9 <= sum(asr.frames[: marks[0]]) <= 16000 * 1.2
    assert asr.partials == [True]


async def test_the_listener_passes_whether_partials_are_wanted() -> None:
    asr = FakeScriptedASR()
    await _run(asr, [tone(600), silence(1000)], partials=False)
    assert asr.partials == [False]
    assert asr.frames.count(0) == 1
