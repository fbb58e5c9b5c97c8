"""The pipeline on test-double engines: ordering, barge-in, truncation, failures."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import pytest

from parley.audio.frames import Frame
from parley.engines.base import ToolSpec
from parley.errors import BadAudioError, ClientError, EngineError
from parley.pipeline import (
    InputCommitted,
    Pipeline,
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    ResponseOptions,
    ResponseStarted,
    ResponseTextDelta,
    ResponseToolCall,
    SpeechStarted,
    SpeechStopped,
    StageError,
    TranscriptFinal,
    TranscriptPartial,
)
from tests.fakes.engines import fake_engines, fake_settings, silence, tone


def chunks(frame: Frame, ms: int = 20) -> list[Frame]:
    n = frame.sample_rate * ms // 1000
    return [Frame(frame.samples[i : i + n], frame.sample_rate) for i in range(0, len(frame), n)]


async def feed(p: Pipeline, frames: Iterable[Frame], *, settle: bool = True) -> None:
    for f in frames:
        for c in chunks(f):
            await p.push(c)
            if settle:
                await p.settle()
            else:
                await asyncio.sleep(0)


async def run(p: Pipeline, frames: Iterable[Frame], *, settle: bool = True) -> list[PipelineEvent]:
    events: list[PipelineEvent] = []

    async def collect() -> None:
        async for e in p.events():
            events.append(e)

    async with asyncio.TaskGroup() as tg:
        tg.create_task(collect())
        async with p:
            await feed(p, frames, settle=settle)
            await p.end_of_input()
    return events


def kinds(events: list[PipelineEvent]) -> list[str]:
    out: list[str] = []
    for e in events:
        name = type(e).__name__
        if not out or out[-1] != name:
            out.append(name)
    return out


async def test_pipeline_spoken_turn_produces_ordered_reply() -> None:
    engines, asr, llm, tts = fake_engines()
    p = Pipeline(engines, fake_settings(silence_duration_ms=300, prefix_padding_ms=200))
    events = await run(p, [silence(500), tone(800), silence(600)])
    order = kinds(events)
    assert order[0] == "SpeechStarted"
    assert order.index("SpeechStopped") < order.index("InputCommitted")
    assert order.index("InputCommitted") < order.index("TranscriptFinal")
    assert order.index("TranscriptPartial") < order.index("TranscriptFinal")
    assert order.index("TranscriptFinal") < order.index("ResponseStarted")
    assert order[-1] == "ResponseDone"
    started = next(e for e in events if isinstance(e, SpeechStarted))
    stopped = next(e for e in events if isinstance(e, SpeechStopped))
    assert 480 <= started.audio_start_ms <= 540
    assert 1280 <= stopped.audio_end_ms <= 1360
    final = next(e for e in events if isinstance(e, TranscriptFinal))
    assert final.text == "hello parley"
    # The recogniser got the speech plus the prefix padding (200 ms) before it.
    assert asr.utterances[0] >= 16000 * (0.8 + 0.2) * 0.95
    done = next(e for e in events if isinstance(e, ResponseDone))
    assert done.status == "completed"
    assert done.text.strip() == llm.reply
    text = "".join(e.text for e in events if isinstance(e, ResponseTextDelta))
    assert text.strip() == llm.reply
    audio = [e for e in events if isinstance(e, ResponseAudio)]
    assert audio and all(e.frame.sample_rate == 24000 for e in audio)
    assert done.audio_ms == pytest.approx(sum(e.frame.duration_ms for e in audio))
    # The text went to TTS in clauses, not all at once.
    assert len(tts.texts) >= 2
    assert done.timeline.is_monotone()
    assert set(done.timeline.stages()) == {
        "endpointing",
        "asr_final",
        "llm_first_token",
        "tts_first_audio",
        "send",
    }
    # The user and assistant turns are in the history, in order.
    roles = [i.message.role for i in p.history.items]
    assert roles == ["user", "assistant"]


async def test_pipeline_prompt_has_instructions_and_history() -> None:
    engines, _, llm, _ = fake_engines()
    p = Pipeline(engines, fake_settings(silence_duration_ms=300))
    await run(p, [tone(500), silence(400), tone(500), silence(2000)])
    assert len(llm.requests) == 2
    second = llm.requests[1].messages
    assert second[0].role == "system"
    assert [m.role for m in second[1:]] == ["user", "assistant", "user"]


async def test_pipeline_barge_in_during_playback_truncates_to_heard() -> None:
    engines, _, _llm, _ = fake_engines(llm_reply=" ".join(f"word{i}." for i in range(40)))
    p = Pipeline(engines, fake_settings(silence_duration_ms=300, prefix_padding_ms=0))
    # The reply (40 words, 4 s of audio) plays while 1000 ms more of input arrives, then the
    # user speaks over it.
    events = await run(p, [tone(500), silence(1000), tone(400), silence(400)])
    interrupted = [e for e in events if isinstance(e, PlaybackInterrupted)]
    assert len(interrupted) == 1
    cut = interrupted[0]
    first_done = next(e for e in events if isinstance(e, ResponseDone))
    assert first_done.status == "completed"
    assert cut.response_id == first_done.response_id
    assert cut.audio_ms == pytest.approx(4000, abs=50)
    # Heard: from the first audio (300 ms of silence into the gap) to the interruption.
    assert 600 <= cut.heard_ms <= 800
    heard_words = cut.heard_text.split()
    assert 4 <= len(heard_words) <= 9
    assert heard_words == [f"word{i}." for i in range(len(heard_words))]
    item = p.history.get(cut.item_id)
    assert item is not None and item.message.text == cut.heard_text


async def test_pipeline_barge_in_during_generation_cancels_within_a_chunk() -> None:
    engines, _, llm, _tts = fake_engines(
        llm_reply=" ".join(f"word{i}," for i in range(200)), llm_delay_s=0.002
    )
    p = Pipeline(engines, fake_settings(silence_duration_ms=200, prefix_padding_ms=0))
    events = await run(p, [tone(400), silence(260), tone(400), silence(300)], settle=False)
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert done[0].status == "cancelled" and done[0].reason == "turn_detected"
    assert len(done[0].text.split()) < 200
    assert llm.closed >= 1
    # No audio of the cancelled response is delivered after its done event.
    idx = events.index(done[0])
    assert not [
        e
        for e in events[idx:]
        if isinstance(e, ResponseAudio) and e.response_id == done[0].response_id
    ]


async def test_pipeline_interrupt_response_off_lets_reply_finish() -> None:
    engines, _, _, _ = fake_engines()
    p = Pipeline(engines, fake_settings(silence_duration_ms=300, interrupt_response=False))
    events = await run(p, [tone(500), silence(400), tone(500), silence(1000)])
    assert not [e for e in events if isinstance(e, PlaybackInterrupted)]
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert [d.status for d in done] == ["completed", "completed"]


async def test_pipeline_manual_commit_without_vad() -> None:
    engines, asr, _, _ = fake_engines()
    p = Pipeline(engines, fake_settings(type="none"))
    events: list[PipelineEvent] = []
    async with p:
        with pytest.raises(ClientError) as err:
            p.commit()
        assert err.value.code == "input_audio_buffer_commit_empty"
        await feed(p, [tone(300), silence(200)])
        p.commit()
        await p.settle()
    async for e in p.events():
        events.append(e)
    assert not [e for e in events if isinstance(e, SpeechStarted)]
    assert asr.utterances == [8000]
    assert any(isinstance(e, InputCommitted) for e in events)
    assert any(isinstance(e, ResponseDone) and e.status == "completed" for e in events)


async def test_pipeline_text_only_response_and_tool_call() -> None:
    engines, _, llm, tts = fake_engines(llm_tool_call=("get_weather", '{"city": "Paris"}'))
    p = Pipeline(engines, fake_settings())
    async with p:
        from parley.engines.base import Message

        p.history.add(Message("user", "weather in Paris?"))
        p.start_response(
            ResponseOptions(audio=False, tools=(ToolSpec("get_weather", "", {"type": "object"}),))
        )
        with pytest.raises(ClientError):
            p.start_response()
        await p.settle()
    events = [e async for e in p.events()]
    call = next(e for e in events if isinstance(e, ResponseToolCall))
    assert (call.name, call.arguments) == ("get_weather", '{"city": "Paris"}')
    assert llm.requests[0].tools[0].name == "get_weather"
    assert tts.texts == []
    assert p.history.items[-1].message.tool_calls[0].id == call.call_id


async def test_pipeline_engine_failures_do_not_end_session() -> None:
    engines, asr, llm, _ = fake_engines(llm_fail=True)
    p = Pipeline(engines, fake_settings(silence_duration_ms=300))
    events = await run(p, [tone(400), silence(400)])
    done = next(e for e in events if isinstance(e, ResponseDone))
    assert done.status == "failed" and done.error is not None
    assert done.error.code == "engine_error"
    llm.fail = False
    asr.fail = True
    p2 = Pipeline(engines, fake_settings(silence_duration_ms=300))
    events = await run(p2, [tone(400), silence(400)])
    assert any(isinstance(e, StageError) and e.stage == "asr" for e in events)


async def test_pipeline_rejects_wrong_rate_and_ignores_empty() -> None:
    engines, *_ = fake_engines()
    async with Pipeline(engines, fake_settings()) as p:
        with pytest.raises(BadAudioError):
            await p.push(silence(20, rate=8000))
        await p.push(Frame.silence(0, 16000))
        assert p.input_ms == 0


async def test_pipeline_resamples_other_input_rates() -> None:
    engines, asr, _, _ = fake_engines()
    p = Pipeline(
        engines, fake_settings(silence_duration_ms=300, prefix_padding_ms=0), input_rate=24000
    )
    events = await run(p, [tone(500, rate=24000), silence(400, rate=24000)])
    assert any(isinstance(e, TranscriptFinal) for e in events)
    assert 7000 <= asr.utterances[0] <= 16000
    assert any(isinstance(e, ResponseStarted) for e in events)
    assert any(isinstance(e, TranscriptPartial) for e in events)


async def test_pipeline_trailing_silence_is_not_recognised_but_pauses_are() -> None:
    engines, asr, _, _ = fake_engines()
    p = Pipeline(engines, fake_settings(silence_duration_ms=500, prefix_padding_ms=0))
    # 400 ms of speech, a 300 ms pause (shorter than the silence window), 400 ms of speech,
    # then silence that ends the turn.
    await run(p, [tone(400), silence(300), tone(400), silence(900)])
    fed_ms = asr.utterances[0] / 16
    # Both stretches of speech and the whole pause reach the recogniser (held audio is released
    # when speech resumes), but at most ~200 ms (+ one packet) of the trailing silence does.
    assert 400 + 300 + 400 <= fed_ms <= 400 + 300 + 400 + 200 + 64


async def test_pipeline_recogniser_failing_mid_turn_does_not_wedge_settle() -> None:
    """A recogniser that fails while the caller is still speaking ends its turn's recognition
    early; the turn closes later, and waiting for the pipeline to settle must still return."""
    from parley.engines.registry import Engines
    from tests.fakes.flaky import FlakyASR

    engines, _, _, tts = fake_engines()
    failing = FlakyASR(error=EngineError("recogniser died"), error_after=3)
    engines = Engines(vad=engines.vad, asr=failing, llm=engines.llm, tts=tts)
    events: list[PipelineEvent] = []
    async with Pipeline(engines, fake_settings(), sink=events.append) as p:
        await feed(p, [tone(1500), silence(1000)])
        await asyncio.wait_for(p.settle(), 5)
    errors = [e for e in events if isinstance(e, StageError)]
    assert len(errors) == 1 and errors[0].stage == "asr"
    assert not p.listener.closed
