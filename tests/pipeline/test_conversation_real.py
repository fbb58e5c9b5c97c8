"""The pipeline with the real embedded engines on real speech (no test doubles)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from parley.audio.files import read_audio
from parley.audio.frames import Frame
from parley.bench.clips import Clip
from parley.config import Settings, load_settings
from parley.engines.registry import Engines, build_engines
from parley.pipeline import (
    Pipeline,
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    TranscriptFinal,
    TranscriptPartial,
)
from tests.conftest import shared_words


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(env={"PARLEY_PROFILE": "fast"})


@pytest.fixture(scope="module")
def engines(settings: Settings) -> Engines:
    return build_engines(settings)


async def converse(
    engines: Engines, settings: Settings, frames: list[Frame]
) -> list[PipelineEvent]:
    pipeline = Pipeline(engines, settings, input_rate=frames[0].sample_rate)
    events: list[PipelineEvent] = []

    async def collect() -> None:
        async for e in pipeline.events():
            events.append(e)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(collect())
        async with pipeline:
            for frame in frames:
                n = frame.sample_rate // 50
                for i in range(0, len(frame), n):
                    await pipeline.push(Frame(frame.samples[i : i + n], frame.sample_rate))
                    await pipeline.settle()
            await pipeline.end_of_input()
    return events


@pytest.mark.parametrize("clip_id", ["en_goforward_raw", "en_librivox_0870", "en_sb_birch_canoe"])
async def test_conversation_real_speech_gets_a_spoken_reply(
    engines: Engines, settings: Settings, clips: dict[str, Clip], clip_id: str
) -> None:
    clip = clips[clip_id]
    audio = read_audio(clip.path)
    events = await converse(engines, settings, [audio, Frame.silence(800, audio.sample_rate)])
    finals = [e for e in events if isinstance(e, TranscriptFinal)]
    assert finals, "no transcript"
    heard = " ".join(f.text for f in finals)
    # A weak recogniser: some of the reference words must be there, not all.
    assert len(shared_words(heard, clip.transcript)) >= 2, heard
    assert any(isinstance(e, TranscriptPartial) for e in events)
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert done and all(d.status == "completed" for d in done)
    assert done[0].text.strip()
    audio_out = np.concatenate([e.frame.samples for e in events if isinstance(e, ResponseAudio)])
    assert len(audio_out) / 24000 > 0.5
    assert np.abs(audio_out.astype(np.int32)).max() > 1000  # speech, not silence
    assert done[0].timeline.is_monotone()
    assert done[0].timeline.response_latency_ms is not None


async def test_conversation_real_barge_in_cuts_reply(
    engines: Engines, settings: Settings, clips: dict[str, Clip]
) -> None:
    first = read_audio(clips["en_librivox_0880"].path)
    second = read_audio(clips["en_sb_culprit"].path)
    rate = first.sample_rate
    # The caller pauses 1.5 s into the reply, then speaks over it.
    events = await converse(
        engines, settings, [first, Frame.silence(1500, rate), second, Frame.silence(800, rate)]
    )
    cut = [e for e in events if isinstance(e, PlaybackInterrupted)]
    assert len(cut) == 1
    assert cut[0].audio_ms > cut[0].heard_ms > 0
    # Heard is measured from the first reply audio to the interruption: under the 1.5 s gap.
    assert 200 < cut[0].heard_ms < 1500
    full = next(e for e in events if isinstance(e, ResponseDone)).text.split()
    assert len(cut[0].heard_text.split()) < len(full)
    # The caller's second turn is answered too.
    assert len([e for e in events if isinstance(e, ResponseDone)]) == 2
