"""Engines that count their calls and errors, passing everything else through unchanged.

:func:`instrument` wraps each engine of an :class:`~parley.engines.registry.Engines` in a thin
shell that satisfies the same Protocol and reports ``on_call(kind, engine)`` when work starts
and ``on_error(kind, engine)`` when the engine raises (the error is then re-raised as it was).
Streams are relayed item by item inside ``contextlib.aclosing``, so closing the outer stream
closes the engine's at once; cancellation passes through and is never counted as an error.

What counts as one call: a VAD ``probabilities`` (one scored frame), an ASR ``stream`` or
``transcribe``, an LLM ``stream``, a TTS ``synthesize``. Metadata (``voices``, ``open_stream``)
and ``health()`` (the inner engine's, through :func:`~parley.engines.base.engine_health`) are not
counted. The callbacks must be cheap and must not raise: they run on every call.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from typing import Any, Literal, TypeVar

from parley.audio.frames import Frame
from parley.engines.base import (
    ASR,
    LLM,
    TTS,
    VAD,
    ChatRequest,
    EngineHealth,
    LLMEvent,
    SpeechOptions,
    Transcript,
    VADStream,
    Voice,
    engine_health,
)
from parley.engines.registry import Engines

__all__ = [
    "InstrumentedASR",
    "InstrumentedLLM",
    "InstrumentedTTS",
    "InstrumentedVAD",
    "Kind",
    "Report",
    "instrument",
    "instrument_engine",
]

Kind = Literal["vad", "asr", "llm", "tts"]
Report = Callable[[str, str], None]
"""A callback taking ``(kind, engine name)``."""

T = TypeVar("T")


async def _relay(
    open_stream: Callable[[], AsyncGenerator[T, None]],
    kind: Kind,
    name: str,
    on_call: Report,
    on_error: Report,
) -> AsyncGenerator[T, None]:
    on_call(kind, name)
    async with contextlib.aclosing(open_stream()) as inner:
        while True:
            try:
                item = await anext(inner)
            except StopAsyncIteration:
                return
            except Exception:  # counted, then raised as it was; CancelledError is not caught
                on_error(kind, name)
                raise
            yield item


class InstrumentedVADStream:
    __slots__ = ("_name", "_on_call", "_on_error", "inner")

    def __init__(self, inner: VADStream, name: str, on_call: Report, on_error: Report) -> None:
        self.inner = inner
        self._name = name
        self._on_call = on_call
        self._on_error = on_error

    @property
    def window_samples(self) -> int:
        return self.inner.window_samples

    async def probabilities(self, frame: Frame) -> list[float]:
        self._on_call("vad", self._name)
        try:
            return await self.inner.probabilities(frame)
        except Exception:
            self._on_error("vad", self._name)
            raise

    def reset(self) -> None:
        self.inner.reset()

    def close(self) -> None:
        """Give the inner stream's resources back now, if it holds any (a Silero model)."""
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()


class InstrumentedVAD:
    __slots__ = ("_on_call", "_on_error", "inner", "name", "sample_rate")

    def __init__(self, inner: VAD, on_call: Report, on_error: Report) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self._on_call = on_call
        self._on_error = on_error

    def health(self) -> EngineHealth:
        return engine_health(self.inner)

    def open_stream(self) -> VADStream:
        return InstrumentedVADStream(
            self.inner.open_stream(), self.name, self._on_call, self._on_error
        )


class InstrumentedASR:
    __slots__ = ("_on_call", "_on_error", "inner", "name", "sample_rate")

    def __init__(self, inner: ASR, on_call: Report, on_error: Report) -> None:
        self.inner = inner
        self.name = inner.name
        self.sample_rate = inner.sample_rate
        self._on_call = on_call
        self._on_error = on_error

    def health(self) -> EngineHealth:
        return engine_health(self.inner)

    def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        return _relay(
            lambda: self.inner.stream(audio, language=language, partials=partials),
            "asr",
            self.name,
            self._on_call,
            self._on_error,
        )

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        self._on_call("asr", self.name)
        try:
            return await self.inner.transcribe(audio, language=language)
        except Exception:
            self._on_error("asr", self.name)
            raise


class InstrumentedLLM:
    __slots__ = ("_on_call", "_on_error", "inner", "name", "supports_vision")

    def __init__(self, inner: LLM, on_call: Report, on_error: Report) -> None:
        self.inner = inner
        self.name = inner.name
        self.supports_vision = inner.supports_vision
        self._on_call = on_call
        self._on_error = on_error

    def health(self) -> EngineHealth:
        return engine_health(self.inner)

    def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        return _relay(
            lambda: self.inner.stream(request), "llm", self.name, self._on_call, self._on_error
        )


class InstrumentedTTS:
    __slots__ = ("_on_call", "_on_error", "inner", "name")

    def __init__(self, inner: TTS, on_call: Report, on_error: Report) -> None:
        self.inner = inner
        self.name = inner.name
        self._on_call = on_call
        self._on_error = on_error

    def health(self) -> EngineHealth:
        return engine_health(self.inner)

    def voices(self) -> Sequence[Voice]:
        return self.inner.voices()

    def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        return _relay(
            lambda: self.inner.synthesize(text, options),
            "tts",
            self.name,
            self._on_call,
            self._on_error,
        )


def instrument_engine(engine: Any, on_call: Report, on_error: Report) -> Any:
    """One ASR, LLM or TTS engine (told apart by what it has), reporting its calls."""
    if hasattr(engine, "synthesize"):
        return InstrumentedTTS(engine, on_call, on_error)
    if hasattr(engine, "transcribe"):
        return InstrumentedASR(engine, on_call, on_error)
    return InstrumentedLLM(engine, on_call, on_error)


def instrument(engines: Engines, on_call: Report, on_error: Report) -> Engines:
    """The same engines, each reporting its calls and errors to the callbacks."""
    return Engines(
        vad=InstrumentedVAD(engines.vad, on_call, on_error),
        asr=InstrumentedASR(engines.asr, on_call, on_error),
        llm=InstrumentedLLM(engines.llm, on_call, on_error),
        tts=InstrumentedTTS(engines.tts, on_call, on_error),
        turn=engines.turn,
    )
