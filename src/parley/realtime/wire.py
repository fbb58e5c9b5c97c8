"""The Realtime protocol's client events as typed values.

The client events and their shapes are those of the GA protocol as the official ``openai`` SDK
types them (``openai.types.realtime``); parley defines its own pydantic models for them so that
the server never depends on the SDK's internals at run time. Every raw WebSocket message goes
through :func:`parse_client_event`, which either returns one event model or raises
:class:`~parley.errors.ProtocolError` carrying the OpenAI error shape (``code``, ``message``,
``param``, ``event_id``); :func:`parley.errors.error_event` builds the ``error`` event.

Models ignore fields they do not know (a newer client must not be cut off) but reject values of
the wrong type: validation is strict, so ``"5"`` is not an integer and ``"true"`` not a boolean.
Every field of :class:`SessionConfig` is optional: in a ``session.update`` only what the client
sent changes, ``model_fields_set`` tells what was sent, and a field sent as ``null`` is in it
with the value ``None`` (``turn_detection: null`` turns turn detection off).

This module keeps no state and does no I/O; it does not decode audio (the session knows the
format) and does not decide what an event means.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, Self, TypeAlias

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from parley.audio.formats import WireFormat, parse_wire_format
from parley.errors import Code, ProtocolError, error_event
from parley.ids import new_event_id, new_id
from parley.realtime.beta import client_event_from_beta
from parley.realtime.validation import kind_of, protocol_error, show

__all__ = [
    "CLIENT_EVENT_TYPES",
    "MAX_EVENT_BYTES",
    "AssistantMessageItem",
    "AudioConfig",
    "AudioFormat",
    "AudioInputConfig",
    "AudioOutputConfig",
    "ClientEvent",
    "ConversationItem",
    "ConversationItemCreateEvent",
    "ConversationItemDeleteEvent",
    "ConversationItemRetrieveEvent",
    "ConversationItemTruncateEvent",
    "FunctionCallItem",
    "FunctionCallOutputItem",
    "FunctionTool",
    "InputAudioBufferAppendEvent",
    "InputAudioBufferClearEvent",
    "InputAudioBufferCommitEvent",
    "InputAudioPart",
    "InputImagePart",
    "InputTextPart",
    "ItemReference",
    "NoiseReductionConfig",
    "OutputAudioBufferClearEvent",
    "OutputAudioPart",
    "OutputTextPart",
    "PcmFormat",
    "PcmaFormat",
    "PcmuFormat",
    "PromptConfig",
    "ProtocolError",
    "ResponseAudioConfig",
    "ResponseAudioOutputConfig",
    "ResponseCancelEvent",
    "ResponseCreateEvent",
    "ResponseInputItem",
    "ResponseParams",
    "RetentionRatioTruncation",
    "SemanticVad",
    "ServerVad",
    "SessionConfig",
    "SessionUpdateEvent",
    "SystemMessageItem",
    "ToolChoice",
    "ToolChoiceFunction",
    "TranscriptionConfig",
    "Truncation",
    "TurnDetection",
    "UserMessageItem",
    "VoiceId",
    "audio_format",
    "error_event",
    "event_type_of",
    "new_event_id",
    "new_id",
    "parse_client_event",
    "wire_format",
]

# OpenAI closes nothing over this, it answers with an error; so does parley, before parsing.
MAX_EVENT_BYTES = 15 * 1024 * 1024
# Turn detection's ranges: the same bounds as parley's own settings (config.TurnDetectionSettings),
# so that a value a client may send is one the pipeline accepts.
MAX_PREFIX_PADDING_MS = 5000
MAX_SILENCE_DURATION_MS = 10000
MAX_IDLE_TIMEOUT_MS = 600_000


# --------------------------------------------------------------------------- base


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)


class _Partial(_Wire):
    """A config object that a ``session.update`` changes field by field."""

    def merged(self, update: Self) -> Self:
        """This config with the fields sent in ``update`` applied; nested configs merge too."""
        changes: dict[str, Any] = {}
        for name in update.model_fields_set:
            new = getattr(update, name)
            old = getattr(self, name)
            if isinstance(new, _Partial) and isinstance(old, type(new)):
                new = old.merged(new)
            changes[name] = new
        return self.model_copy(update=changes)


# --------------------------------------------------------------------------- audio formats


class PcmFormat(_Wire):
    """16-bit little-endian PCM; the API supports 24 kHz only."""

    type: Literal["audio/pcm"]
    rate: Literal[24000] = 24000


class PcmuFormat(_Wire):
    """G.711 mu-law at 8 kHz."""

    type: Literal["audio/pcmu"]


class PcmaFormat(_Wire):
    """G.711 A-law at 8 kHz."""

    type: Literal["audio/pcma"]


AudioFormat: TypeAlias = Annotated[PcmFormat | PcmuFormat | PcmaFormat, Field(discriminator="type")]


def wire_format(fmt: AudioFormat) -> WireFormat:
    """The codec-level format that a wire format object names."""
    rate = fmt.rate if isinstance(fmt, PcmFormat) else None
    return parse_wire_format(fmt.type, rate)


def audio_format(fmt: WireFormat) -> AudioFormat:
    """The GA wire object naming ``fmt`` (the inverse of :func:`wire_format` at 24 kHz/8 kHz)."""
    match fmt.ga_type:
        case "audio/pcmu":
            return PcmuFormat(type="audio/pcmu")
        case "audio/pcma":
            return PcmaFormat(type="audio/pcma")
        case _:
            return PcmFormat(type="audio/pcm")


# --------------------------------------------------------------------------- session config


class TranscriptionConfig(_Wire):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class NoiseReductionConfig(_Wire):
    """Accepted and echoed; parley does not filter input audio."""

    type: Literal["near_field", "far_field"] | None = None
    strength: float | None = None


class ServerVad(_Wire):
    """Voice activity turn detection; an absent field keeps parley's default."""

    type: Literal["server_vad"]
    threshold: float | None = Field(None, ge=0.0, le=1.0)
    prefix_padding_ms: int | None = Field(None, ge=0, le=MAX_PREFIX_PADDING_MS)
    silence_duration_ms: int | None = Field(None, ge=0, le=MAX_SILENCE_DURATION_MS)
    create_response: bool | None = None
    interrupt_response: bool | None = None
    idle_timeout_ms: int | None = Field(None, ge=0, le=MAX_IDLE_TIMEOUT_MS)


class SemanticVad(_Wire):
    type: Literal["semantic_vad"]
    eagerness: Literal["low", "medium", "high", "auto"] | None = None
    create_response: bool | None = None
    interrupt_response: bool | None = None


TurnDetection: TypeAlias = Annotated[ServerVad | SemanticVad, Field(discriminator="type")]


class AudioInputConfig(_Partial):
    format: AudioFormat | None = None
    transcription: TranscriptionConfig | None = None
    noise_reduction: NoiseReductionConfig | None = None
    turn_detection: TurnDetection | None = None


class VoiceId(_Wire):
    """A custom voice by id: ``{"id": "voice_1234"}``."""

    id: str


class AudioOutputConfig(_Partial):
    format: AudioFormat | None = None
    voice: str | VoiceId | None = None
    speed: float | None = Field(None, ge=0.25, le=1.5)


class AudioConfig(_Partial):
    input: AudioInputConfig | None = None
    output: AudioOutputConfig | None = None


class FunctionTool(_Wire):
    type: Literal["function"] = "function"
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ToolChoiceFunction(_Wire):
    type: Literal["function"]
    name: str


ToolChoice: TypeAlias = Literal["auto", "none", "required"] | ToolChoiceFunction


class RetentionRatioTruncation(_Wire):
    type: Literal["retention_ratio"]
    retention_ratio: float = Field(ge=0.0, le=1.0)


Truncation: TypeAlias = Literal["auto", "disabled"] | RetentionRatioTruncation


def _one_modality(value: list[str]) -> list[str]:
    if len(set(value)) != 1:
        raise ValueError("exactly one of 'audio' or 'text'")
    return value


OutputModalities: TypeAlias = Annotated[
    list[Literal["text", "audio"]], AfterValidator(_one_modality)
]
MaxOutputTokens: TypeAlias = Annotated[int, Field(ge=1)] | Literal["inf"]


# --------------------------------------------------------------------------- content and items


class InputTextPart(_Wire):
    type: Literal["input_text"]
    text: str


class InputAudioPart(_Wire):
    """Base64 audio in the session's input format, and/or its transcript."""

    type: Literal["input_audio"]
    audio: str | None = None
    transcript: str | None = None


class InputImagePart(_Wire):
    """An image as a ``data:`` URL."""

    type: Literal["input_image"]
    image_url: str | None = None
    detail: Literal["auto", "low", "high"] | None = None


class OutputTextPart(_Wire):
    type: Literal["output_text"]
    text: str


class OutputAudioPart(_Wire):
    type: Literal["output_audio"]
    audio: str | None = None
    transcript: str | None = None


UserContent: TypeAlias = Annotated[
    InputTextPart | InputAudioPart | InputImagePart, Field(discriminator="type")
]
AssistantContent: TypeAlias = Annotated[
    OutputTextPart | OutputAudioPart, Field(discriminator="type")
]
ItemStatus: TypeAlias = Literal["completed", "incomplete", "in_progress"]


class _Item(_Wire):
    id: str | None = None
    object: Literal["realtime.item"] | None = None
    status: ItemStatus | None = None


class SystemMessageItem(_Item):
    type: Literal["message"]
    role: Literal["system"]
    content: list[InputTextPart]


class UserMessageItem(_Item):
    type: Literal["message"]
    role: Literal["user"]
    content: list[UserContent]


class AssistantMessageItem(_Item):
    type: Literal["message"]
    role: Literal["assistant"]
    content: list[AssistantContent]


class FunctionCallItem(_Item):
    type: Literal["function_call"]
    name: str
    arguments: str
    call_id: str | None = None


class FunctionCallOutputItem(_Item):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class ItemReference(_Wire):
    """An existing conversation item, by id, in ``response.create``'s ``input``."""

    type: Literal["item_reference"]
    id: str


_MessageItem: TypeAlias = Annotated[
    SystemMessageItem | UserMessageItem | AssistantMessageItem, Field(discriminator="role")
]
ConversationItem: TypeAlias = Annotated[
    _MessageItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")
]
ResponseInputItem: TypeAlias = Annotated[
    _MessageItem | FunctionCallItem | FunctionCallOutputItem | ItemReference,
    Field(discriminator="type"),
]

PromptVariable: TypeAlias = (
    str | Annotated[InputTextPart | InputImagePart, Field(discriminator="type")]
)


class PromptConfig(_Wire):
    """A stored prompt template by id; accepted and echoed, parley keeps no prompt store."""

    id: str
    version: str | None = None
    variables: dict[str, PromptVariable] | None = None


class SessionConfig(_Partial):
    """A Realtime (or transcription) session's configuration; every field optional.

    OpenAI requires ``type`` in ``session.update``; parley takes its absence as "unchanged".
    """

    type: Literal["realtime", "transcription"] | None = None
    model: str | None = None
    output_modalities: OutputModalities | None = None
    instructions: str | None = None
    audio: AudioConfig | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxOutputTokens | None = None
    truncation: Truncation | None = None
    prompt: PromptConfig | None = None
    include: list[str] | None = None
    tracing: Literal["auto"] | dict[str, Any] | None = None


class ResponseAudioOutputConfig(_Wire):
    voice: str | VoiceId | None = None
    format: AudioFormat | None = None


class ResponseAudioConfig(_Wire):
    output: ResponseAudioOutputConfig | None = None


class ResponseParams(_Wire):
    """``response.create``'s overrides for one response; absent fields take the session's."""

    output_modalities: OutputModalities | None = None
    instructions: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    max_output_tokens: MaxOutputTokens | None = None
    # "none" makes an out-of-band response that is not added to the conversation.
    conversation: Literal["auto", "none"] | None = None
    input: list[ResponseInputItem] | None = None
    metadata: dict[str, str] | None = None
    audio: ResponseAudioConfig | None = None
    prompt: PromptConfig | None = None


# --------------------------------------------------------------------------- client events


class _Event(_Wire):
    event_id: str | None = None


class SessionUpdateEvent(_Event):
    type: Literal["session.update"]
    session: SessionConfig


class InputAudioBufferAppendEvent(_Event):
    type: Literal["input_audio_buffer.append"]
    audio: str


class InputAudioBufferCommitEvent(_Event):
    type: Literal["input_audio_buffer.commit"]


class InputAudioBufferClearEvent(_Event):
    type: Literal["input_audio_buffer.clear"]


class ConversationItemCreateEvent(_Event):
    type: Literal["conversation.item.create"]
    item: ConversationItem
    previous_item_id: str | None = None


class ConversationItemRetrieveEvent(_Event):
    type: Literal["conversation.item.retrieve"]
    item_id: str


class ConversationItemTruncateEvent(_Event):
    type: Literal["conversation.item.truncate"]
    item_id: str
    content_index: int = Field(ge=0)
    audio_end_ms: int = Field(ge=0)


class ConversationItemDeleteEvent(_Event):
    type: Literal["conversation.item.delete"]
    item_id: str


class ResponseCreateEvent(_Event):
    type: Literal["response.create"]
    response: ResponseParams | None = None


class ResponseCancelEvent(_Event):
    type: Literal["response.cancel"]
    response_id: str | None = None


class OutputAudioBufferClearEvent(_Event):
    type: Literal["output_audio_buffer.clear"]


ClientEvent: TypeAlias = Annotated[
    SessionUpdateEvent
    | InputAudioBufferAppendEvent
    | InputAudioBufferCommitEvent
    | InputAudioBufferClearEvent
    | ConversationItemCreateEvent
    | ConversationItemRetrieveEvent
    | ConversationItemTruncateEvent
    | ConversationItemDeleteEvent
    | ResponseCreateEvent
    | ResponseCancelEvent
    | OutputAudioBufferClearEvent,
    Field(discriminator="type"),
]

_CLIENT_EVENTS: TypeAdapter[ClientEvent] = TypeAdapter(ClientEvent)

CLIENT_EVENT_TYPES: tuple[str, ...] = (
    "session.update",
    "input_audio_buffer.append",
    "input_audio_buffer.commit",
    "input_audio_buffer.clear",
    "conversation.item.create",
    "conversation.item.retrieve",
    "conversation.item.truncate",
    "conversation.item.delete",
    "response.create",
    "response.cancel",
    "output_audio_buffer.clear",
)


# --------------------------------------------------------------------------- parsing


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_client_event(raw: str | bytes, *, beta: bool = False) -> ClientEvent:
    """One WebSocket text message to its client event, or :class:`ProtocolError`.

    With ``beta`` the message is read as the beta protocol (flat session fields, old names) and
    mapped to GA first; ``param`` in an error then names the GA field.
    """
    size = len(raw)
    if isinstance(raw, str) and size * 4 > MAX_EVENT_BYTES:  # UTF-8 is at most 4 bytes a char
        size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_EVENT_BYTES:
        raise ProtocolError(
            f"Message of {size} bytes exceeds the maximum of {MAX_EVENT_BYTES} bytes.",
            code=Code.MESSAGE_TOO_LARGE,
        )
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, bad UTF-8, NaN, nesting
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc) or "too deep"
        raise ProtocolError(
            f"We could not parse the JSON body of your event: {detail}.", code=Code.INVALID_JSON
        ) from None
    if not isinstance(data, dict):
        raise ProtocolError(
            f"Expected an event object, but got {kind_of(data)} instead.", code=Code.INVALID_EVENT
        )
    raw_id = data.get("event_id")
    event_id = raw_id if isinstance(raw_id, str) else None
    if beta:
        data = client_event_from_beta(data)
    return _validate(data, event_id)


def event_type_of(raw: str | bytes) -> str:
    """The ``type`` of a raw client message, for a log line (never the whole message)."""
    try:
        kind = json.loads(raw).get("type")
    except (ValueError, AttributeError, RecursionError):
        return "a message"
    return str(kind)[:64] if kind is not None else "a message"


def _validate(data: dict[str, Any], event_id: str | None) -> ClientEvent:
    if "type" not in data:
        raise ProtocolError(
            "The 'type' field is missing.", code=Code.INVALID_EVENT, param="type", event_id=event_id
        )
    kind = data["type"]
    if not isinstance(kind, str):
        raise ProtocolError(
            f"Invalid type for 'type': expected a string, but got {kind_of(kind)} instead.",
            code=Code.INVALID_TYPE,
            param="type",
            event_id=event_id,
        )
    if kind not in CLIENT_EVENT_TYPES:
        supported = ", ".join(f"'{t}'" for t in CLIENT_EVENT_TYPES)
        raise ProtocolError(
            f"Invalid value: {show(kind)}. Supported values are: {supported}.",
            code=Code.INVALID_VALUE,
            param="type",
            event_id=event_id,
        )
    try:
        return _CLIENT_EVENTS.validate_python(data)
    except ValidationError as exc:
        raise protocol_error(exc, data, event_id) from None
