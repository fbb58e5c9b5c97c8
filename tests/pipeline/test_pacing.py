"""A reply's later clauses are synthesised only while its audio is less than
``pipeline.tts_lead_ms`` ahead of real-time playback: a long reply's tail must not take the CPU
from other callers' first words."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator

import pytest

from parley.audio.frames import Frame
from parley.config import Settings
from parley.engines.base import Message, SpeechOptions
from parley.pipeline.conversation import Pipeline
from parley.pipeline.events import ResponseDone
from tests.fakes.engines import FakeToneTTS, fake_engines

# Three sentences of five words: 0.5 s of the double's audio each.
REPLY = "One two three four five. Six seven eight nine ten. Eleven twelve thirteen fourteen end."


class _TimedTTS(FakeToneTTS):
    """The tone double, noting when each clause's synthesis began."""

    def __init__(self) -> None:
        super().__init__()
        self.began: list[float] = []

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        self.began.append(time.monotonic())
        async for frame in super().synthesize(text, options):
            yield frame


async def _reply(lead_ms: float) -> tuple[_TimedTTS, float]:
    engines, _, llm, _ = fake_engines()
    tts = _TimedTTS()
    llm.reply = REPLY
    engines = engines.__class__(vad=engines.vad, asr=engines.asr, llm=llm, tts=tts)
    settings = Settings.model_validate({"pipeline": {"tts_lead_ms": lead_ms}})
    async with Pipeline(engines, settings) as p:
        p.history.add(Message("user", "count for me"))
        began = time.monotonic()
        p.start_response()
        await p.settle()
        took = time.monotonic() - began
    done = [e async for e in p.events() if isinstance(e, ResponseDone)]
    assert [d.status for d in done] == ["completed"]
    return tts, took


@pytest.mark.parametrize("lead_ms", [200.0, 400.0])
async def test_later_clauses_wait_until_playback_nears_them(lead_ms: float) -> None:
    tts, took = await _reply(lead_ms)
    assert len(tts.began) == 3
    first = tts.began[0]
    for k, began in enumerate(tts.began[1:], start=1):
        ahead_ms = 500.0 * k - 1000.0 * (began - first)  # audio sent minus audio played
        assert ahead_ms <= lead_ms + 60  # it waited (the double starts its audio at once)
    assert took >= (1.0 - lead_ms / 1000.0) - 0.15  # the last clause began 1 s - lead in


async def test_no_lead_synthesises_as_fast_as_the_engine_goes() -> None:
    tts, took = await _reply(0.0)
    assert len(tts.began) == 3 and took < 0.5
