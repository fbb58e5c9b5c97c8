"""What the Realtime session asks of the pipeline: plain commands, carried out by the server.

The session (sans I/O) returns these; the transport adapter executes each on the connection's
pipeline, in order, and reports the outcome back to the session (``command_done`` or
``command_failed``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from parley.audio.frames import Frame
from parley.config import TurnDetectionSettings
from parley.engines.base import ContentPart
from parley.pipeline.options import ResponseOptions

__all__ = [
    "CancelResponse",
    "ClearInput",
    "ClearOutput",
    "Command",
    "CommitInput",
    "Configure",
    "Output",
    "PushAudio",
    "StartResponse",
    "TranscribeItem",
    "Truncate",
]


@dataclass(frozen=True, slots=True)
class PushAudio:
    frame: Frame


@dataclass(frozen=True, slots=True)
class CommitInput:
    event_id: str | None


@dataclass(frozen=True, slots=True)
class ClearInput:
    event_id: str | None


@dataclass(frozen=True, slots=True)
class Configure:
    """Apply the session's configuration to the pipeline."""

    input_rate: int
    output_rate: int
    turn_detection: TurnDetectionSettings
    defaults: ResponseOptions
    instructions: str | tuple[ContentPart, ...]
    # The transcription language (None: the server's) and whether partial transcripts are
    # wanted (the client asked for transcription, so it gets deltas): Whisper decodes partials
    # only then.
    language: str | None = None
    partials: bool = False


@dataclass(frozen=True, slots=True)
class StartResponse:
    """Generate response ``response_id`` into assistant item ``item_id``. ``turn_id``: the user
    turn it answers (its latency timeline carries on), None for a client's response.create."""

    response_id: str
    item_id: str
    options: ResponseOptions
    turn_id: str | None = None
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class CancelResponse:
    """Stop generating ``response_id``; the pipeline answers with its ResponseDone."""

    response_id: str
    reason: str = "client_cancelled"
    event_id: str | None = None


@dataclass(frozen=True, slots=True)
class ClearOutput:
    """Stop playing (``output_audio_buffer.clear``): cut the reply where it is."""

    event_id: str | None


@dataclass(frozen=True, slots=True)
class Truncate:
    item_id: str
    audio_end_ms: int
    event_id: str | None


@dataclass(frozen=True, slots=True)
class TranscribeItem:
    """Recognise the audio of a client-created user item (no transcript was given)."""

    item_id: str
    frame: Frame
    event_id: str | None


Command = (
    PushAudio
    | CommitInput
    | ClearInput
    | Configure
    | StartResponse
    | CancelResponse
    | ClearOutput
    | Truncate
    | TranscribeItem
)


@dataclass(slots=True)
class Output:
    """What one input caused: events for the client, commands for the pipeline, and responses
    whose audio still queued for the client must be dropped (cancelled or interrupted)."""

    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)

    def extend(self, other: Output) -> Output:
        self.events += other.events
        self.commands += other.commands
        self.stale += other.stale
        return self
