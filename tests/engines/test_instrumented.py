"""Instrumented engines: calls and errors counted, everything else passed through unchanged."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator

import pytest

from parley.audio.frames import Frame
from parley.engines.base import (
    ASR,
    LLM,
    TTS,
    VAD,
    ChatRequest,
    Finish,
    LLMEvent,
    Message,
    SpeechOptions,
    TextDelta,
)
from parley.engines.instrumented import instrument
from parley.errors import EngineError
from tests.fakes.engines import FakeScriptedLLM, fake_engines, silence, tone

REQUEST = ChatRequest((Message("user", "hi"),))


class Tally:
    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str]] = Counter()
        self.errors: Counter[tuple[str, str]] = Counter()

    def on_call(self, kind: str, engine: str) -> None:
        self.calls[kind, engine] += 1

    def on_error(self, kind: str, engine: str) -> None:
        self.errors[kind, engine] += 1


async def frames(*chunks: Frame) -> AsyncIterator[Frame]:
    for chunk in chunks:
        yield chunk


async def test_instrumented_satisfies_protocols_and_keeps_attributes() -> None:
    engines, *_ = fake_engines()
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)
    assert isinstance(wrapped.vad, VAD)
    assert isinstance(wrapped.asr, ASR)
    assert isinstance(wrapped.llm, LLM)
    assert isinstance(wrapped.tts, TTS)
    assert (wrapped.vad.name, wrapped.vad.sample_rate) == ("fake-energy", 16000)
    assert (wrapped.asr.name, wrapped.asr.sample_rate) == ("fake-asr", 16000)
    assert (wrapped.llm.name, wrapped.llm.supports_vision) == ("fake-llm", False)
    assert wrapped.tts.name == "fake-tts"
    assert [v.id for v in wrapped.tts.voices()] == ["fake"]
    assert not tally.calls  # metadata is not a call


async def test_instrumented_counts_calls_and_passes_results_through() -> None:
    engines, _, llm, _ = fake_engines()
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)

    stream = wrapped.vad.open_stream()
    assert stream.window_samples == 512
    assert await stream.probabilities(tone(64)) == [1.0, 1.0]
    stream.reset()
    transcripts = [t async for t in wrapped.asr.stream(frames(tone(100), silence(100)))]
    assert transcripts[-1].is_final
    assert transcripts[-1].text == "hello parley"
    assert (await wrapped.asr.transcribe(tone(100))).text == "hello parley"
    events = [e async for e in wrapped.llm.stream(REQUEST)]
    assert events[-1] == Finish("stop")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).strip() == llm.reply
    audio = [f async for f in wrapped.tts.synthesize("two words", SpeechOptions(sample_rate=8000))]
    assert len(audio) == 10
    assert all(f.sample_rate == 8000 for f in audio)

    assert tally.calls == {
        ("vad", "fake-energy"): 1,
        ("asr", "fake-asr"): 2,
        ("llm", "fake-llm"): 1,
        ("tts", "fake-tts"): 1,
    }
    assert not tally.errors


async def test_instrumented_counts_errors_and_reraises_them() -> None:
    engines, *_ = fake_engines(asr_fail=True, llm_fail=True)
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)
    with pytest.raises(EngineError, match="fake llm failure"):
        async for _ in wrapped.llm.stream(REQUEST):
            pass
    with pytest.raises(EngineError, match="fake recogniser failure"):
        async for _ in wrapped.asr.stream(frames(tone(40))):
            pass
    assert tally.errors == {("llm", "fake-llm"): 1, ("asr", "fake-asr"): 1}
    assert tally.calls == tally.errors


async def test_instrumented_counts_errors_of_plain_calls() -> None:
    class BrokenASR:
        name = "broken"
        sample_rate = 16000

        def stream(
            self, audio: object, *, language: str | None = None, partials: bool = True
        ) -> None:
            raise AssertionError("not called")

        async def transcribe(self, audio: Frame, *, language: str | None = None) -> None:
            raise RuntimeError("boom")

    class BrokenStream:
        window_samples = 512

        async def probabilities(self, frame: Frame) -> list[float]:
            raise EngineError("vad down")

        def reset(self) -> None:
            pass

    class BrokenVAD:
        name = "broken-vad"
        sample_rate = 16000

        def open_stream(self) -> BrokenStream:
            return BrokenStream()

    engines, *_ = fake_engines()
    engines = type(engines)(BrokenVAD(), BrokenASR(), engines.llm, engines.tts)  # type: ignore[arg-type]
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)
    with pytest.raises(RuntimeError, match="boom"):
        await wrapped.asr.transcribe(tone(20))
    with pytest.raises(EngineError, match="vad down"):
        await wrapped.vad.open_stream().probabilities(tone(20))
    assert tally.errors == {("asr", "broken"): 1, ("vad", "broken-vad"): 1}


async def test_instrumented_stream_closes_inner_generator_on_aclose() -> None:
    engines, _, llm, tts = fake_engines(tts_delay_s=0.001)
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)

    async with contextlib.aclosing(wrapped.tts.synthesize("many words here", SpeechOptions())) as s:
        async for _ in s:
            break
    assert tts.closed_early == 1  # the engine's own generator saw the close at once

    stream = wrapped.llm.stream(REQUEST)
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()
    assert llm.closed == 1
    assert not tally.errors


async def test_instrumented_stream_never_started_never_opens_the_engine() -> None:
    engines, _, llm, _ = fake_engines()
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)
    stream = wrapped.llm.stream(REQUEST)
    await stream.aclose()
    assert llm.requests == []
    assert not tally.calls


async def test_instrumented_cancellation_passes_through_uncounted() -> None:
    llm = FakeScriptedLLM(delay_s=10.0)
    engines, *_ = fake_engines()
    engines = type(engines)(engines.vad, engines.asr, llm, engines.tts)
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)
    started = asyncio.Event()

    async def consume() -> None:
        started.set()
        async with contextlib.aclosing(wrapped.llm.stream(REQUEST)) as stream:
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await started.wait()
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert llm.closed == 1
    assert tally.calls == {("llm", "fake-llm"): 1}
    assert not tally.errors


async def test_instrumented_errors_in_consumer_are_not_engine_errors() -> None:
    engines, _, llm, _ = fake_engines()
    tally = Tally()
    wrapped = instrument(engines, tally.on_call, tally.on_error)

    async def consume() -> AsyncGenerator[LLMEvent, None]:
        async with contextlib.aclosing(wrapped.llm.stream(REQUEST)) as stream:
            async for event in stream:
                yield event

    with pytest.raises(ValueError, match="consumer"):
        async with contextlib.aclosing(consume()) as events:
            async for _ in events:
                raise ValueError("consumer")
    assert llm.closed == 1
    assert not tally.errors
