"""Test doubles for the engine Protocols: deterministic, instant, and observable.

They satisfy the same Protocols as the real engines so the pipeline's behaviour (ordering,
cancellation, barge-in, truncation) can be tested exactly; the real engines are exercised by
the integration tests on real speech.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from parley.audio.frames import Frame
from parley.config import Settings
from parley.engines.base import (
    ChatRequest,
    Finish,
    LLMEvent,
    SpeechOptions,
    TextDelta,
    ToolCallDelta,
    Transcript,
    Usage,
    Voice,
    Word,
)
from parley.engines.registry import Engines
from parley.errors import EngineError


def tone(ms: float, rate: int = 16000, amplitude: int = 8000, hz: float = 220.0) -> Frame:
    t = np.arange(int(rate * ms / 1000)) / rate
    return Frame((amplitude * np.sin(2 * np.pi * hz * t)).astype(np.int16), rate)


def silence(ms: float, rate: int = 16000) -> Frame:
    return Frame.silence(ms, rate)


class FakeEnergyVADStream:
    """Probability = RMS energy scaled so that ``tone()`` is 1.0 and silence 0.0."""

    window_samples = 512

    def __init__(self) -> None:
        self._rest = np.zeros(0, np.int16)

    async def probabilities(self, frame: Frame) -> list[float]:
        data = np.concatenate([self._rest, frame.samples])
        n = len(data) // self.window_samples
        self._rest = data[n * self.window_samples :]
        out = []
        for i in range(n):
            w = data[i * self.window_samples : (i + 1) * self.window_samples].astype(np.float64)
            out.append(float(min(np.sqrt(np.mean(w * w)) / 1000.0, 1.0)))
        return out

    def reset(self) -> None:
        self._rest = np.zeros(0, np.int16)


class FakeEnergyVAD:
    name = "fake-energy"
    sample_rate = 16000

    def open_stream(self) -> FakeEnergyVADStream:
        return FakeEnergyVADStream()


@dataclass
class FakeScriptedASR:
    """Says ``text`` for every utterance; records how many samples each utterance had, the
    length of every frame it was handed (0: a pause mark) and the ``partials`` asked for."""

    text: str = "hello parley"
    name: str = "fake-asr"
    sample_rate: int = 16000
    fail: bool = False
    utterances: list[int] = field(default_factory=list)
    frames: list[int] = field(default_factory=list)
    partials: list[bool] = field(default_factory=list)

    async def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        self.partials.append(partials)
        samples = 0
        async for frame in audio:
            self.frames.append(len(frame))
            if not len(frame):
                continue  # a pause mark
            samples += len(frame)
            yield Transcript("hel", is_final=False)
        self.utterances.append(samples)
        if self.fail:
            raise EngineError("fake recogniser failure")
        words = tuple(Word(w, i * 0.3, i * 0.3 + 0.25) for i, w in enumerate(self.text.split()))
        yield Transcript(self.text, is_final=True, words=words)

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        return Transcript(self.text, is_final=True)


@dataclass
class FakeScriptedLLM:
    """Streams ``reply`` word by word (``delay_s`` between words), or scripted tool calls."""

    reply: str = "Hello there. I am a test double, and I speak in clauses."
    delay_s: float = 0.0
    tool_call: tuple[str, str] | None = None  # (name, arguments JSON)
    fail: bool = False
    name: str = "fake-llm"
    supports_vision: bool = False
    requests: list[ChatRequest] = field(default_factory=list)
    closed: int = 0

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        self.requests.append(request)
        try:
            if self.fail:
                raise EngineError("fake llm failure")
            if self.tool_call is not None:
                name, args = self.tool_call
                yield ToolCallDelta(0, id="call_1", name=name)
                yield ToolCallDelta(0, arguments=args[: len(args) // 2])
                yield ToolCallDelta(0, arguments=args[len(args) // 2 :])
                yield Usage(10, 5)
                yield Finish("tool_calls")
                return
            for word in self.reply.split(" "):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield TextDelta(word + " ")
            yield Usage(12, len(self.reply.split()))
            yield Finish("stop")
        finally:
            self.closed += 1


@dataclass
class FakeToneTTS:
    """100 ms of tone per word, in 20 ms frames, at the requested rate."""

    name: str = "fake-tts"
    delay_s: float = 0.0
    texts: list[str] = field(default_factory=list)
    closed_early: int = 0

    def voices(self) -> Sequence[Voice]:
        return [Voice("fake", "Fake", "en")]

    async def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        self.texts.append(text)
        frames = 5 * len(text.split())
        sent = 0
        try:
            for _ in range(frames):
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                else:
                    await asyncio.sleep(0)
                yield tone(20, options.sample_rate, amplitude=3000)
                sent += 1
        finally:
            if sent < frames:
                self.closed_early += 1


def fake_engines(**kw: object) -> tuple[Engines, FakeScriptedASR, FakeScriptedLLM, FakeToneTTS]:
    asr = FakeScriptedASR(**{k[4:]: v for k, v in kw.items() if k.startswith("asr_")})  # type: ignore[arg-type]
    llm = FakeScriptedLLM(**{k[4:]: v for k, v in kw.items() if k.startswith("llm_")})  # type: ignore[arg-type]
    tts = FakeToneTTS(**{k[4:]: v for k, v in kw.items() if k.startswith("tts_")})  # type: ignore[arg-type]
    return Engines(vad=FakeEnergyVAD(), asr=asr, llm=llm, tts=tts), asr, llm, tts


def fake_settings(**turn: object) -> Settings:
    return Settings.model_validate({"turn_detection": turn})
