"""What the pipeline emits, in order, for the protocol layer or the CLI to turn into output.

Every response event carries its ``response_id``; a consumer drops audio of a response that is
no longer current (the pipeline already does so for the events it has queued).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from parley.audio.frames import Frame
from parley.engines.base import Usage, Word
from parley.errors import ParleyError
from parley.pipeline.timeline import TurnTimeline

__all__ = [
    "BudgetWarning",
    "InputCommitted",
    "PipelineEvent",
    "PlaybackInterrupted",
    "ResponseAudio",
    "ResponseDone",
    "ResponseStarted",
    "ResponseTextDelta",
    "ResponseToolCall",
    "SpeechStarted",
    "SpeechStopped",
    "StageError",
    "TranscriptFinal",
    "TranscriptPartial",
]


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    turn_id: str
    item_id: str
    audio_start_ms: float


@dataclass(frozen=True, slots=True)
class SpeechStopped:
    turn_id: str
    item_id: str
    audio_end_ms: float


@dataclass(frozen=True, slots=True)
class InputCommitted:
    """A turn's audio is closed; its user item will be ``item_id``."""

    turn_id: str
    item_id: str
    audio_ms: float


@dataclass(frozen=True, slots=True)
class TranscriptPartial:
    turn_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class TranscriptFinal:
    turn_id: str
    item_id: str
    text: str
    words: tuple[Word, ...]


@dataclass(frozen=True, slots=True)
class ResponseStarted:
    response_id: str
    item_id: str
    turn_id: str | None
    audio: bool = True  # False: a text-only response


@dataclass(frozen=True, slots=True)
class ResponseTextDelta:
    response_id: str
    item_id: str
    text: str


@dataclass(frozen=True, slots=True)
class ResponseToolCall:
    """A complete function call the model asked for (its item is added to the history)."""

    response_id: str
    item_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ResponseAudio:
    response_id: str
    item_id: str
    frame: Frame


ResponseStatus = Literal["completed", "cancelled", "incomplete", "failed"]


@dataclass(frozen=True, slots=True)
class ResponseDone:
    """Generation of a response ended (``completed``, or ``cancelled`` with a ``reason``).

    ``text`` is all the reply text generated and ``audio_ms`` all the audio emitted. Playback
    may go on after this; if the listener interrupts it, :class:`PlaybackInterrupted` follows.
    """

    response_id: str
    item_id: str
    turn_id: str | None
    status: ResponseStatus
    reason: str | None
    text: str
    audio_ms: float
    usage: Usage | None
    timeline: TurnTimeline
    error: ParleyError | None = None
    # What the response's engine calls cost (metering with prices set), else None.
    cost_usd: float | None = None


@dataclass(frozen=True, slots=True)
class PlaybackInterrupted:
    """The listener spoke over a reply: only ``heard_ms`` of its ``audio_ms`` was played.

    ``heard_text`` is the reply text spoken within ``heard_ms``; the assistant's item in the
    history has been truncated to it.
    """

    response_id: str
    item_id: str
    heard_ms: float
    audio_ms: float
    heard_text: str


@dataclass(frozen=True, slots=True)
class StageError:
    """An engine failed outside a response (e.g. the recogniser); the session goes on."""

    turn_id: str | None
    stage: Literal["vad", "asr", "llm", "tts"]
    error: ParleyError
    # The user item whose recognition failed (stage "asr" of a committed turn).
    item_id: str | None = None


@dataclass(frozen=True, slots=True)
class BudgetWarning:
    """A reservation took a budget of the caller past its soft limit (sent once a session)."""

    tenant: str
    key_id: str
    message: str


PipelineEvent = (
    SpeechStarted
    | SpeechStopped
    | InputCommitted
    | TranscriptPartial
    | TranscriptFinal
    | ResponseStarted
    | ResponseTextDelta
    | ResponseToolCall
    | ResponseAudio
    | ResponseDone
    | PlaybackInterrupted
    | StageError
    | BudgetWarning
)
