"""The engine Protocols and the plain data that flows through them.

Four kinds of engine, each a Protocol of at most three members, async iterators in and out
(async generators, so that a consumer can ``aclose()`` them):

- :class:`VAD`: a frame of audio -> speech probabilities, per session stream.
- :class:`ASR`: audio frames in -> partial transcripts while they arrive, a final one at the end.
- :class:`LLM`: a chat request -> text deltas, tool-call deltas, usage and a finish reason.
- :class:`TTS`: text -> PCM frames as they are synthesised.

An engine may also say how it is (:class:`EngineHealth`) through an optional ``health()``
method, outside the Protocols so that engines without one need nothing: :func:`engine_health`
reads it, and counts an engine without it as ``ok``. ``health()`` must be cheap and must not
block: ``/healthz`` calls it on the event loop.

Engines own their models; they never see sockets, sessions or wire events. An engine that does
CPU-heavy work runs it off the event loop (``asyncio.to_thread`` or its own executor) so one
session's compute never stalls another's I/O. Cancellation: closing an engine's async iterator
(``aclose()``, or cancelling the task that drives it) must stop its work within one chunk.
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

from parley.audio.frames import Frame
from parley.content import ContentPart, ImagePart, TextPart

__all__ = [
    "ASR",
    "LLM",
    "OPENAI_VOICE_NAMES",
    "TTS",
    "VAD",
    "ChatRequest",
    "ContentPart",
    "EngineHealth",
    "Finish",
    "ImagePart",
    "LLMEvent",
    "Message",
    "SpeechOptions",
    "TextDelta",
    "TextPart",
    "ToolCall",
    "ToolCallDelta",
    "ToolSpec",
    "Transcript",
    "Usage",
    "VADStream",
    "Voice",
    "Word",
    "engine_health",
    "estimate_message_tokens",
    "estimate_tokens",
]

# An image costs roughly this many tokens at low detail in OpenAI's accounting.
_IMAGE_TOKENS = 85
_MESSAGE_OVERHEAD = 4


# --- ASR -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Word:
    """A recognised word and where it lies in the utterance (seconds from its first sample)."""

    text: str
    start_s: float
    end_s: float
    confidence: float | None = None


@dataclass(frozen=True, slots=True)
class Transcript:
    """A hypothesis: partial (``is_final`` false) while audio arrives, then one final."""

    text: str
    is_final: bool
    words: tuple[Word, ...] = ()
    language: str | None = None


# --- LLM -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class Message:
    """One chat message. ``content`` is plain text or a tuple of parts (text and images)."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | tuple[ContentPart, ...] = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str | None = None

    @property
    def text(self) -> str:
        """The message's text parts joined; images are left out."""
        if isinstance(self.content, str):
            return self.content
        return " ".join(p.text for p in self.content if isinstance(p, TextPart))

    @property
    def has_images(self) -> bool:
        return not isinstance(self.content, str) and any(
            isinstance(p, ImagePart) for p in self.content
        )


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A function the model may call; ``parameters`` is a JSON Schema object."""

    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    # "auto" | "none" | "required" | a function name to force.
    tool_choice: str = "auto"
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """A piece of a tool call; ``id`` and ``name`` come with the first piece of each ``index``."""

    index: int
    arguments: str = ""
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True, slots=True)
class Usage:
    input_tokens: int
    output_tokens: int

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


@dataclass(frozen=True, slots=True)
class Finish:
    reason: Literal["stop", "length", "tool_calls", "content_filter"]


LLMEvent = TextDelta | ToolCallDelta | Usage | Finish


def estimate_tokens(text: str) -> int:
    """A tokenizer-free estimate, ~4 characters per token (OpenAI's rule of thumb).

    Used where an engine reports no usage and for context budgets; exact counts come from the
    engine when it has them.
    """
    return math.ceil(len(text) / 4)


def estimate_message_tokens(message: Message) -> int:
    """:func:`estimate_tokens` of a message: its text, tool calls, images and framing."""
    images = (
        0
        if isinstance(message.content, str)
        else sum(isinstance(p, ImagePart) for p in message.content)
    )
    chars = len(message.text) + sum(len(c.arguments) + len(c.name) for c in message.tool_calls)
    return _MESSAGE_OVERHEAD + math.ceil(chars / 4) + images * _IMAGE_TOKENS


# --- TTS -------------------------------------------------------------------------------------


# OpenAI's voice names: every TTS engine maps them onto voices of its own, so that clients
# written for OpenAI work unchanged.
OPENAI_VOICE_NAMES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "onyx",
    "nova",
    "sage",
    "shimmer",
    "verse",
    "marin",
    "cedar",
)


@dataclass(frozen=True, slots=True)
class Voice:
    id: str
    name: str
    language: str
    gender: str | None = None


@dataclass(frozen=True, slots=True)
class SpeechOptions:
    """How to speak: ``voice`` None means the engine's default; ``speed`` 1.0 is normal."""

    voice: str | None = None
    language: str | None = None
    speed: float = 1.0
    sample_rate: int = 24000
    stream: str | None = None
    """Whose speech this is (a response id). Batched engines share their queue fairly between
    streams and abort a stream's queued work when its caller stops listening. None: the call
    is a stream of its own."""
    continuation: bool = False
    """A later clause of a stream that is already playing. A stream's first clause (what its
    listener is waiting to hear) goes ahead of continuations in a batched engine's queue."""


# --- Health ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineHealth:
    """How an engine is: ``ok``; ``degraded`` (serving, with less capacity or recovering from a
    fault); ``down`` (cannot serve now). ``detail`` says why, for people reading ``/healthz``."""

    status: Literal["ok", "degraded", "down"]
    detail: str = ""


_OK = EngineHealth("ok")


def engine_health(engine: object) -> EngineHealth:
    """``engine.health()`` where the engine has one; ``ok`` where it has none; ``degraded`` where
    the check itself raised (``/healthz`` must still answer)."""
    health = getattr(engine, "health", None)
    if health is None:
        return _OK
    try:
        result = health()
    except Exception as exc:
        return EngineHealth("degraded", f"health check failed: {type(exc).__name__}: {exc}")
    if not isinstance(result, EngineHealth):
        raise TypeError(f"{type(engine).__name__}.health() returned {result!r}")
    return result


# --- Protocols -------------------------------------------------------------------------------


@runtime_checkable
class VADStream(Protocol):
    """One session's voice activity state (recurrent models keep state across windows)."""

    @property
    def window_samples(self) -> int:
        """Samples per scored window at the engine's ``sample_rate``."""
        ...

    async def probabilities(self, frame: Frame) -> list[float]:
        """Speech probability of each window completed by ``frame``; leftovers are kept."""
        ...

    def reset(self) -> None: ...


@runtime_checkable
class VAD(Protocol):
    name: str
    sample_rate: int

    def open_stream(self) -> VADStream: ...


@runtime_checkable
class ASR(Protocol):
    name: str
    sample_rate: int

    def stream(
        self,
        audio: AsyncIterable[Frame],
        *,
        language: str | None = None,
        partials: bool = True,
    ) -> AsyncGenerator[Transcript, None]:
        """Partials while ``audio`` flows (when the hypothesis changes); one final at its end.

        ``partials=False``: the caller wants only the final (nobody reads partial
        transcripts), so an engine for which partials cost compute may skip them; yielding
        them anyway is allowed. A zero-length frame in ``audio`` is a *pause mark*: the caller
        went quiet here and more audio may follow (or the stream may end). An engine may start
        work on the final there (see ``WhisperASR``); any other engine ignores it.
        """
        ...

    async def transcribe(self, audio: Frame, *, language: str | None = None) -> Transcript:
        """A whole recording at once; returns the final transcript."""
        ...


@runtime_checkable
class LLM(Protocol):
    name: str
    supports_vision: bool

    def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        """Deltas as generated; ``Usage`` and ``Finish`` come last."""
        ...


@runtime_checkable
class TTS(Protocol):
    name: str

    def voices(self) -> Sequence[Voice]: ...

    def synthesize(self, text: str, options: SpeechOptions) -> AsyncGenerator[Frame, None]:
        """Frames at ``options.sample_rate`` as they are synthesised."""
        ...
