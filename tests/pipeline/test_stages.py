"""The pipeline's stages alone: the listener's bounded input and the responder's guarantee."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable
from dataclasses import dataclass

import pytest

from parley.audio.frames import Frame
from parley.bench.clips import Clip
from parley.engines.base import Transcript
from parley.engines.silero import SileroVAD
from parley.errors import ClientError
from parley.pipeline import (
    Pipeline,
    PipelineEvent,
    ResponseDone,
    ResponseOptions,
    TranscriptFinal,
)
from parley.pipeline import listener as listener_module
from parley.pipeline.history import History
from parley.pipeline.responder import Responder
from tests.fakes.engines import FakeScriptedLLM, FakeToneTTS, fake_engines, fake_settings, tone


@dataclass
class SlowASRDouble:
    """A recogniser that takes ``per_frame_s`` for each chunk it is handed (or never takes
    any with ``stuck``), so that audio can arrive faster than it is recognised."""

    per_frame_s: float = 0.05
    stuck: bool = False
    name: str = "slow-asr"
    sample_rate: int = 16000

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        if self.stuck:
            await asyncio.sleep(3600)
        async for _ in audio:
            await asyncio.sleep(self.per_frame_s)
        yield Transcript("slow words", is_final=True)

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        return Transcript("slow words", is_final=True)


def responder(events: list[PipelineEvent], tg: asyncio.TaskGroup, **llm: object) -> Responder:
    return Responder(
        FakeScriptedLLM(**llm),  # type: ignore[arg-type]
        FakeToneTTS(),
        History(),
        emit=events.append,
        spawn=tg.create_task,
        clock=lambda: 0.0,
    )


async def test_responder_cancel_before_the_task_ran_ends_it_once() -> None:
    events: list[PipelineEvent] = []
    async with asyncio.TaskGroup() as tg:
        r = responder(events, tg)
        r.start(ResponseOptions(), response_id="resp_a", item_id="item_a")
        assert await r.cancel("client_cancelled", "resp_a")  # before its first step
        await asyncio.sleep(0.01)
    done = [e for e in events if isinstance(e, ResponseDone)]
    assert [(d.response_id, d.status, d.reason) for d in done] == [
        ("resp_a", "cancelled", "client_cancelled")
    ]
    assert r.current is None and r.idle.is_set()
    assert r.history.get("item_a") is None  # nothing was said: no empty item lingers


async def test_responder_cancel_of_another_id_leaves_it_running() -> None:
    events: list[PipelineEvent] = []
    async with asyncio.TaskGroup() as tg:
        r = responder(events, tg)
        r.start(ResponseOptions(audio=False), response_id="resp_a", item_id="item_a")
        assert not await r.cancel("client_cancelled", "resp_other")
        await r.idle.wait()
    (done,) = [e for e in events if isinstance(e, ResponseDone)]
    assert done.status == "completed" and done.text.startswith("Hello there.")
    assert r.history.get("item_a") is not None


async def test_responder_every_started_response_ends_once_under_random_cancels() -> None:
    events: list[PipelineEvent] = []
    async with asyncio.TaskGroup() as tg:
        r = responder(events, tg, delay_s=0.001)
        for i in range(30):
            r.start(ResponseOptions(), response_id=f"resp_{i}", item_id=f"item_{i}")
            for _ in range(i % 4):
                await asyncio.sleep(0)
            await r.cancel()
    done = [e.response_id for e in events if isinstance(e, ResponseDone)]
    assert done == [f"resp_{i}" for i in range(30)]


async def test_listener_waits_for_a_slow_recogniser_with_bounded_backlog(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "MAX_BACKLOG_S", 2.0)
    engines, *_ = fake_engines()
    slow = SlowASRDouble(per_frame_s=0.02)
    engines = type(engines)(vad=engines.vad, asr=slow, llm=engines.llm, tts=engines.tts)
    p = Pipeline(engines, fake_settings(silence_duration_ms=300), auto_respond=False)
    peak = 0
    async with p:
        for _ in range(20):  # 20 s of "speech" pushed as fast as push returns
            await p.push(tone(1000))
            turn = p.listener.turn
            if turn is not None:
                peak = max(peak, turn.queued)
        await p.end_of_input()
    limit = 2.0 * slow.sample_rate + 16000  # the backlog bound plus one pushed second
    assert 16000 < peak <= limit


async def test_listener_refuses_audio_a_stuck_recogniser_cannot_take(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "MAX_BACKLOG_S", 1.0)
    monkeypatch.setattr(listener_module, "BACKLOG_WAIT_S", 0.2)
    engines, *_ = fake_engines()
    engines = type(engines)(
        vad=engines.vad, asr=SlowASRDouble(stuck=True), llm=engines.llm, tts=engines.tts
    )
    p = Pipeline(engines, fake_settings(silence_duration_ms=300), auto_respond=False)
    async with p:
        with pytest.raises(ClientError) as refused:
            for _ in range(10):
                await p.push(tone(1000))
        assert refused.value.code == "audio_too_fast" and refused.value.param == "audio"
        assert p.listener.turn is not None and p.listener.turn.queued <= 2 * 16000


async def test_listener_manual_buffer_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(listener_module, "MAX_TURN_S", 2.0)
    engines, *_ = fake_engines()
    p = Pipeline(engines, fake_settings(type="none"), auto_respond=False)
    async with p:
        await p.push(tone(1500))
        with pytest.raises(ClientError) as refused:
            await p.push(tone(1000))
        assert refused.value.code == "input_too_large"
        p.clear_input()
        await p.push(tone(1000))  # cleared: room again


async def test_listener_a_turn_that_never_ends_is_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(listener_module, "MAX_TURN_S", 2.0)
    engines, asr, *_ = fake_engines()
    events: list[PipelineEvent] = []
    p = Pipeline(engines, fake_settings(silence_duration_ms=300), sink=events.append)
    async with p:
        for _ in range(5):
            await p.push(tone(1000))
            await p.settle()
        await p.end_of_input()
    # Cut once it passed two seconds (checked after each one-second push), then a new turn.
    assert asr.utterances == [3 * 16000, 2 * 16000]
    assert len([e for e in events if isinstance(e, TranscriptFinal)]) == 2


async def test_pipeline_without_auto_respond_only_reports_the_turn() -> None:
    engines, _, llm, _ = fake_engines()
    events: list[PipelineEvent] = []
    p = Pipeline(
        engines, fake_settings(silence_duration_ms=300), auto_respond=False, sink=events.append
    )
    async with p:
        await p.push(tone(600))
        await p.push(Frame(tone(600).samples * 0, 16000))
        await p.end_of_input()
    assert [type(e).__name__ for e in events if isinstance(e, TranscriptFinal)] == [
        "TranscriptFinal"
    ]
    assert not llm.requests and not [e for e in events if isinstance(e, ResponseDone)]
    item = events[-1]
    assert isinstance(item, TranscriptFinal) and p.history.get(item.item_id) is not None


@dataclass
class JudgeDouble:
    """An end-of-turn model that always gives ``p``, and counts the questions."""

    p: float
    name: str = "judge-double"
    sample_rate: int = 16000
    asked: int = 0

    async def end_of_turn(self, audio: Frame) -> float:
        self.asked += 1
        return self.p


async def committed_after(
    engines: object, frames: list[Frame], *, pace_silence: bool = False, **turn: object
) -> list[float]:
    """Input ms at which each turn was committed, feeding ``frames`` in 20 ms packets; with
    ``pace_silence`` silent frames go at real time (a real model's answer takes a while)."""
    at: list[float] = []
    p: Pipeline

    def sink(event: PipelineEvent) -> None:
        if type(event).__name__ == "InputCommitted":
            at.append(p.input_ms)

    p = Pipeline(engines, fake_settings(**turn), auto_respond=False, sink=sink)  # type: ignore[arg-type]
    async with p:
        for frame in frames:
            n = frame.sample_rate // 50
            for i in range(0, len(frame), n):
                await p.push(Frame(frame.samples[i : i + n], frame.sample_rate))
                for _ in range(3):
                    await asyncio.sleep(0)
                if pace_silence and not frame.samples.any():
                    await asyncio.sleep(0.02)
    return at


@pytest.mark.parametrize(("p", "lo", "hi"), [(0.9, 1200, 1400), (0.1, 2400, 2600)])
async def test_semantic_vad_asks_the_model_once_per_pause(p: float, lo: int, hi: int) -> None:
    base, *_ = fake_engines()
    judge = JudgeDouble(p)
    engines = type(base)(vad=base.vad, asr=base.asr, llm=base.llm, tts=base.tts, turn=judge)
    frames = [tone(1000), Frame.silence(2000, 16000)]
    at = await committed_after(engines, frames, type="semantic_vad", eagerness="auto")
    # Speech ends at 1000 ms: a finished turn ends ~200 ms into the silence (the question
    # plus the VAD's windows); an unfinished one waits for the 1500 ms cap.
    assert len(at) == 1 and lo <= at[0] <= hi
    assert judge.asked == 1


async def test_semantic_vad_without_a_model_is_a_silence_window() -> None:
    engines, *_ = fake_engines()
    frames = [tone(1000), Frame.silence(2000, 16000)]
    at = await committed_after(engines, frames, type="semantic_vad", eagerness="high")
    assert len(at) == 1 and 1250 <= at[0] <= 1450  # high: 300 ms of silence


async def test_semantic_vad_with_smart_turn_on_real_speech(clips: dict[str, Clip]) -> None:
    from parley.audio.files import read_audio
    from parley.audio.resample import resample
    from parley.engines.smart_turn import SmartTurn

    base, *_ = fake_engines()
    engines = type(base)(
        vad=SileroVAD(), asr=base.asr, llm=base.llm, tts=base.tts, turn=SmartTurn()
    )
    audio = resample(read_audio(clips["en_sb_birch_canoe"].path), 16000)
    cut = round(2.0 * 16000)  # "the birch canoe slid on the | smooth planks"
    pause = Frame.silence(1000, 16000)
    # Mid-thought: a one-second pause after "slid on the" does not end the turn.
    first, rest = Frame(audio.samples[:cut], 16000), Frame(audio.samples[cut:], 16000)
    at = await committed_after(
        engines,
        [first, pause, rest, Frame.silence(2000, 16000)],
        pace_silence=True,
        type="semantic_vad",
    )
    assert len(at) == 1
    # A finished sentence ends well before the 1500 ms cap.
    end = audio.duration_ms
    at = await committed_after(
        engines, [audio, Frame.silence(2000, 16000)], pace_silence=True, type="semantic_vad"
    )
    assert len(at) == 1 and at[0] - end < 1000
