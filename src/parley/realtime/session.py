"""The Realtime protocol session, sans I/O.

:class:`RealtimeSession` takes client messages (raw JSON) and pipeline events, and returns server
events (dicts ready for ``json.dumps``) and :data:`Command` s for the pipeline. It never awaits a
socket or a model: the WebSocket handler (``parley.server``) is a thin loop that sends the
events, carries out the commands on the pipeline and reports back with :meth:`command_done` or
:meth:`command_failed`. Every method is synchronous, so protocol behaviour is tested without
sockets.

The session shares the pipeline's :class:`~parley.pipeline.history.History` (plain data, no I/O)
so that conversation items created, retrieved and deleted by the client are the ones the model
sees. Beta clients get the same session; their events are renamed on the way in and out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Literal, assert_never

from parley.audio.formats import (
    WireFormat,
    b64decode_audio,
    b64encode_audio,
    decode_wire,
    encode_wire,
    parse_wire_format,
)
from parley.config import Settings, TurnDetectionSettings
from parley.engines.base import ContentPart, ImagePart, Message, TextPart, ToolCall, ToolSpec
from parley.errors import ClientError, ParleyError
from parley.ids import new_id
from parley.pipeline.conversation import ResponseOptions
from parley.pipeline.events import (
    InputCommitted,
    PipelineEvent,
    PlaybackInterrupted,
    ResponseAudio,
    ResponseDone,
    ResponseStarted,
    ResponseTextDelta,
    ResponseToolCall,
    SpeechStarted,
    SpeechStopped,
    StageError,
    TranscriptFinal,
    TranscriptPartial,
)
from parley.pipeline.history import History
from parley.realtime import wire
from parley.realtime.beta import server_event_to_beta
from parley.realtime.commands import (
    CancelResponse,
    ClearInput,
    ClearOutput,
    Command,
    CommitInput,
    Configure,
    CreateResponse,
    PushAudio,
    TranscribeItem,
    Truncate,
)
from parley.realtime.items import (
    ItemRecord,
    assistant_item,
    function_call_item,
    function_output_item,
    response_object,
    system_item,
    usage_object,
    user_item,
)

__all__ = [
    "CancelResponse",
    "ClearInput",
    "ClearOutput",
    "Command",
    "CommitInput",
    "Configure",
    "CreateResponse",
    "PromptResolver",
    "PushAudio",
    "RealtimeSession",
    "TranscribeItem",
    "Truncate",
]

# semantic_vad's eagerness as a silence window for the endpointer: how long to wait before
# deciding the caller has finished (OpenAI: "low" waits longest, "high" answers soonest).
EAGERNESS_SILENCE_MS = {"low": 1200, "medium": 600, "auto": 600, "high": 300}


# Resolves a stored prompt template: (id, version, variables) -> instructions.
PromptResolver = Callable[[str, str | None, dict[str, Any]], str | tuple[ContentPart, ...]]


@dataclass(slots=True)
class Output:
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)


@dataclass(slots=True)
class _ResponseState:
    id: str
    item_id: str
    audio: bool
    metadata: dict[str, str] | None
    voice: str
    output_format: dict[str, Any]
    max_output_tokens: int | Literal["inf"]
    message_open: bool = False
    text: str = ""
    output: list[dict[str, Any]] = field(default_factory=list)
    audio_ms: float = 0.0


class RealtimeSession:
    """One Realtime connection's protocol state."""

    def __init__(
        self,
        settings: Settings,
        history: History,
        *,
        kind: Literal["realtime", "transcription"] = "realtime",
        model: str = "parley",
        beta: bool = False,
        vision: bool = False,
        asr_model: str = "pocketsphinx",
        prompts: PromptResolver | None = None,
        timeline: bool = False,
        rate_limits: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        self.settings = settings
        self.history = history
        self.kind = kind
        self.beta = beta
        self.vision = vision
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self._prompts = prompts
        # parley's extension: a ``parley.turn.timeline`` event after each response.done.
        self.timeline = timeline
        self._rate_limits = rate_limits or list
        td = settings.turn_detection
        self.config: dict[str, Any] = {
            "type": kind,
            "id": self.id,
            "object": "realtime.session"
            if kind == "realtime"
            else "realtime.transcription_session",
            "model": model,
            "output_modalities": ["audio"],
            "instructions": settings.pipeline.instructions,
            "audio": {
                "input": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "transcription": {"model": asr_model, "language": settings.asr.language},
                    "noise_reduction": None,
                    "turn_detection": {
                        "type": "server_vad",
                        "threshold": td.threshold,
                        "prefix_padding_ms": td.prefix_padding_ms,
                        "silence_duration_ms": td.silence_duration_ms,
                        "create_response": td.create_response and kind == "realtime",
                        "interrupt_response": td.interrupt_response,
                        "idle_timeout_ms": None,
                    },
                },
                "output": {
                    "format": {"type": "audio/pcm", "rate": 24000},
                    "voice": settings.tts.voice or "alloy",
                    "speed": settings.tts.speed,
                },
            },
            "tools": [],
            "tool_choice": "auto",
            "max_output_tokens": "inf",
            "truncation": "auto",
            "prompt": None,
            "tracing": None,
            "expires_at": int(time.time()) + 3600,
        }
        if kind == "transcription":
            for key in (
                "output_modalities",
                "instructions",
                "tools",
                "tool_choice",
                "max_output_tokens",
                "truncation",
                "prompt",
                "tracing",
                "model",
            ):
                self.config.pop(key)
            self.config["audio"].pop("output")
        self._instructions: str | tuple[ContentPart, ...] = settings.pipeline.instructions
        self._tools: tuple[ToolSpec, ...] = ()
        self._items: dict[str, ItemRecord] = {}
        self._responses: dict[str, _ResponseState] = {}
        self._partials: dict[str, str] = {}
        self._metadata: dict[str, dict[str, str]] = {}
        self._input_ms = 0.0
        self._idle_deadline_ms: float | None = None
        self._buffer_ms = 0.0

    # --- helpers -----------------------------------------------------------------------------

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": wire.new_event_id(), **fields}

    def encode(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """The event as this client's protocol version names it (None: beta has no such event)."""
        if not self.beta or event["type"].startswith("parley."):
            return event
        return server_event_to_beta(event)

    @property
    def input_format(self) -> WireFormat:
        return _wire_format(self._audio("input")["format"])

    @property
    def output_format(self) -> WireFormat:
        if self.kind == "transcription":
            return _wire_format({"type": "audio/pcm", "rate": 24000})
        return _wire_format(self._audio("output")["format"])

    def _audio(self, side: str) -> dict[str, Any]:
        audio: dict[str, Any] = self.config["audio"][side]
        return audio

    def _turn_detection(self) -> TurnDetectionSettings:
        td = self._audio("input")["turn_detection"]
        if td is None:
            return TurnDetectionSettings(type="none", create_response=False)
        silence = td.get("silence_duration_ms")
        if td["type"] == "semantic_vad":
            silence = EAGERNESS_SILENCE_MS[td.get("eagerness") or "auto"]
        base = self.settings.turn_detection
        return TurnDetectionSettings(
            type="server_vad",
            threshold=td.get("threshold") if td.get("threshold") is not None else base.threshold,
            prefix_padding_ms=td.get("prefix_padding_ms")
            if td.get("prefix_padding_ms") is not None
            else base.prefix_padding_ms,
            silence_duration_ms=silence if silence is not None else base.silence_duration_ms,
            create_response=bool(td.get("create_response", True)) and self.kind == "realtime",
            interrupt_response=bool(td.get("interrupt_response", True)),
        )

    def _defaults(self) -> ResponseOptions:
        if self.kind == "transcription":
            return ResponseOptions(audio=False)
        out = self._audio("output")
        limit = self.config["max_output_tokens"]
        return ResponseOptions(
            audio=self.config["output_modalities"] == ["audio"],
            tools=self._tools,
            tool_choice=_tool_choice(self.config["tool_choice"]),
            max_output_tokens=None if limit == "inf" else int(limit),
            voice=_voice_name(out["voice"]),
            speed=float(out.get("speed") or 1.0),
        )

    def configure(self) -> Configure:
        """The command that brings the pipeline in line with the session's configuration."""
        return Configure(
            input_rate=self.input_format.sample_rate,
            output_rate=self.output_format.sample_rate,
            turn_detection=self._turn_detection(),
            defaults=self._defaults(),
            instructions=self._instructions,
        )

    # --- lifecycle -----------------------------------------------------------------------------

    def open(self) -> Output:
        """``session.created`` and the initial configuration."""
        return Output([self._event("session.created", session=self.config)], [self.configure()])

    # --- client events -------------------------------------------------------------------------

    def receive(self, raw: str | bytes) -> Output:
        """One client message in; the server events and pipeline commands it causes out."""
        event_id: str | None = None
        try:
            event = wire.parse_client_event(raw, beta=self.beta)
            event_id = event.event_id
            return self._dispatch(event)
        except ParleyError as exc:
            return Output([self.error(exc, getattr(exc, "event_id", None) or event_id)])

    def error(self, exc: ParleyError, event_id: str | None = None) -> dict[str, Any]:
        return wire.error_event(exc, event_id)

    def _dispatch(self, event: wire.ClientEvent) -> Output:
        match event:
            case wire.SessionUpdateEvent():
                return self._session_update(event)
            case wire.InputAudioBufferAppendEvent():
                return self._append(event)
            case wire.InputAudioBufferCommitEvent():
                return Output(commands=[CommitInput(event.event_id)])
            case wire.InputAudioBufferClearEvent():
                return Output(commands=[ClearInput(event.event_id)])
            case wire.ConversationItemCreateEvent():
                return self._item_create(event)
            case wire.ConversationItemRetrieveEvent():
                record = self._record(event.item_id, event.event_id)
                return Output([self._event("conversation.item.retrieved", item=record.wire)])
            case wire.ConversationItemTruncateEvent():
                record = self._record(event.item_id, event.event_id)
                if record.wire.get("role") != "assistant":
                    raise wire.ProtocolError(
                        "only assistant messages can be truncated",
                        param="item_id",
                        code="invalid_value",
                        event_id=event.event_id,
                    )
                audio_ms = record.extra.get("audio_ms")
                if audio_ms is not None and event.audio_end_ms > audio_ms + 1:
                    raise wire.ProtocolError(
                        f"audio_end_ms ({event.audio_end_ms}) is beyond the item's audio "
                        f"({int(audio_ms)} ms)",
                        param="audio_end_ms",
                        code="invalid_value",
                        event_id=event.event_id,
                    )
                return Output(
                    commands=[Truncate(event.item_id, event.audio_end_ms, event.event_id)]
                )
            case wire.ConversationItemDeleteEvent():
                self._record(event.item_id, event.event_id)
                self.history.delete(event.item_id)
                del self._items[event.item_id]
                return Output([self._event("conversation.item.deleted", item_id=event.item_id)])
            case wire.ResponseCreateEvent():
                return self._response_create(event)
            case wire.ResponseCancelEvent():
                return Output(commands=[CancelResponse(event.event_id)])
            case wire.OutputAudioBufferClearEvent():
                return Output(commands=[ClearOutput(event.event_id)])
            case _:
                assert_never(event)

    def _record(self, item_id: str, event_id: str | None) -> ItemRecord:
        record = self._items.get(item_id)
        # A committed user item is known before its transcript puts it in the history.
        if record is None:
            raise wire.ProtocolError(
                f"Item with item_id not found: {item_id}",
                param="item_id",
                code="item_not_found",
                event_id=event_id,
            )
        return record

    def _session_update(self, event: wire.SessionUpdateEvent) -> Output:
        update = event.session.model_dump(exclude_unset=True, mode="json")
        kind = update.pop("type", None)
        if kind is not None and kind != self.kind:
            raise wire.ProtocolError(
                f"a {self.kind} session cannot become a {kind} session",
                param="session.type",
                code="invalid_value",
                event_id=event.event_id,
            )
        prompt = update.pop("prompt", None) if "prompt" in update else ...
        for key in ("include", "tracing"):
            update.pop(key, None)
        if self.kind == "transcription":
            for key in (
                "output_modalities",
                "instructions",
                "tools",
                "tool_choice",
                "max_output_tokens",
                "truncation",
                "model",
            ):
                if key in update:
                    raise wire.ProtocolError(
                        f"{key} is not a setting of a transcription session",
                        param=f"session.{key}",
                        code="invalid_value",
                        event_id=event.event_id,
                    )
        new = _merge(self.config, update)
        td = new["audio"]["input"].get("turn_detection")
        if td is not None and td.get("type") == "server_vad":
            for key, value in (
                ("threshold", self.settings.turn_detection.threshold),
                ("prefix_padding_ms", self.settings.turn_detection.prefix_padding_ms),
                ("silence_duration_ms", self.settings.turn_detection.silence_duration_ms),
                ("create_response", True),
                ("interrupt_response", True),
                ("idle_timeout_ms", None),
            ):
                td.setdefault(key, value)
            for key in ("eagerness",):
                td.pop(key, None)
        instructions: str | tuple[ContentPart, ...] = new.get("instructions", "")
        if prompt is not ... and prompt is not None:
            instructions = self._resolve_prompt(prompt, event.event_id)
            if isinstance(instructions, str) and "instructions" not in update:
                new["instructions"] = instructions
        if prompt is not ...:
            new["prompt"] = prompt
        tools = tuple(
            ToolSpec(t["name"], t.get("description") or "", t.get("parameters") or {})
            for t in new.get("tools", [])
        )
        self.config = new
        self._tools = tools
        if self.kind == "realtime":
            self._instructions = (
                instructions if prompt is not ... and prompt else new["instructions"]
            )
        return Output([self._event("session.updated", session=self.config)], [self.configure()])

    def _resolve_prompt(
        self, prompt: dict[str, Any], event_id: str | None
    ) -> str | tuple[ContentPart, ...]:
        if self._prompts is None:
            raise wire.ProtocolError(
                "this server has no prompt templates",
                param="prompt.id",
                code="invalid_prompt",
                event_id=event_id,
            )
        try:
            return self._prompts(prompt["id"], prompt.get("version"), prompt.get("variables") or {})
        except ParleyError as exc:
            raise wire.ProtocolError(
                exc.message, param=exc.param or "prompt", code=exc.code, event_id=event_id
            ) from exc

    def _append(self, event: wire.InputAudioBufferAppendEvent) -> Output:
        data = b64decode_audio(event.audio)
        try:
            frame = decode_wire(data, self.input_format)
        except ClientError as exc:
            raise wire.ProtocolError(
                exc.message, param="audio", code=exc.code, event_id=event.event_id
            ) from exc
        self._input_ms += frame.duration_ms
        self._buffer_ms += frame.duration_ms
        out = Output(commands=[PushAudio(frame)])
        if self._idle_deadline_ms is not None and self._input_ms >= self._idle_deadline_ms:
            out.events.append(self._idle_timeout())
            out.commands.append(CreateResponse(self._defaults(), None))
        return out

    def _idle_timeout(self) -> dict[str, Any]:
        """The caller stayed silent past ``idle_timeout_ms``: an empty user turn, then a reply."""
        self._idle_deadline_ms = None
        item = self.history.add(Message("user", ""))
        self._items[item.id] = ItemRecord(item.id, user_item(item.id, []))
        end = int(self._input_ms)
        start = int(end - self._buffer_ms)
        return self._event(
            "input_audio_buffer.timeout_triggered",
            item_id=item.id,
            audio_start_ms=max(start, 0),
            audio_end_ms=end,
        )

    def _item_create(self, event: wire.ConversationItemCreateEvent) -> Output:
        item = event.item
        item_id = item.id or new_id("item")
        if item_id in self._items:
            raise wire.ProtocolError(
                f"an item with id {item_id} already exists",
                param="item.id",
                code="invalid_value",
                event_id=event.event_id,
            )
        after = event.previous_item_id
        if after is not None and after != "root" and self.history.get(after) is None:
            raise wire.ProtocolError(
                f"previous item not found: {after}",
                param="previous_item_id",
                code="item_not_found",
                event_id=event.event_id,
            )
        commands: list[Command] = []
        match item:
            case wire.SystemMessageItem():
                text = " ".join(p.text for p in item.content)
                message = Message("system", text)
                wire_item = system_item(item_id, text)
            case wire.UserMessageItem():
                parts: list[ContentPart] = []
                content: list[dict[str, Any]] = []
                for i, part in enumerate(item.content):
                    match part:
                        case wire.InputTextPart():
                            parts.append(TextPart(part.text))
                            content.append({"type": "input_text", "text": part.text})
                        case wire.InputImagePart():
                            if not self.vision:
                                raise wire.ProtocolError(
                                    "the configured language model cannot see images "
                                    "(it does not declare vision); send text instead",
                                    param=f"item.content[{i}]",
                                    code="image_input_not_supported",
                                    event_id=event.event_id,
                                )
                            if not part.image_url:
                                raise wire.ProtocolError(
                                    "input_image needs an image_url",
                                    param=f"item.content[{i}].image_url",
                                    code="missing_required_parameter",
                                    event_id=event.event_id,
                                )
                            parts.append(ImagePart(part.image_url, part.detail or "auto"))
                            content.append(
                                {
                                    "type": "input_image",
                                    "image_url": part.image_url,
                                    "detail": part.detail or "auto",
                                }
                            )
                        case wire.InputAudioPart():
                            if part.transcript is not None:
                                parts.append(TextPart(part.transcript))
                            elif part.audio:
                                data = b64decode_audio(part.audio, param=f"item.content[{i}].audio")
                                commands.append(
                                    TranscribeItem(
                                        item_id,
                                        decode_wire(data, self.input_format),
                                        event.event_id,
                                    )
                                )
                            content.append({"type": "input_audio", "transcript": part.transcript})
                message = Message(
                    "user",
                    tuple(parts)
                    if any(isinstance(p, ImagePart) for p in parts)
                    else " ".join(p.text for p in parts if isinstance(p, TextPart)),
                )
                wire_item = user_item(item_id, content)
            case wire.AssistantMessageItem():
                text = " ".join(
                    (p.text if isinstance(p, wire.OutputTextPart) else p.transcript or "")
                    for p in item.content
                )
                message = Message("assistant", text)
                audio = any(isinstance(p, wire.OutputAudioPart) for p in item.content)
                wire_item = assistant_item(item_id, "completed", audio=audio, text=text)
            case wire.FunctionCallItem():
                call_id = item.call_id or new_id("call")
                message = Message(
                    "assistant", tool_calls=(ToolCall(call_id, item.name, item.arguments),)
                )
                wire_item = function_call_item(
                    item_id, "completed", call_id=call_id, name=item.name, arguments=item.arguments
                )
            case wire.FunctionCallOutputItem():
                message = Message("tool", item.output, tool_call_id=item.call_id)
                wire_item = function_output_item(item_id, call_id=item.call_id, output=item.output)
            case _:
                assert_never(item)
        previous = self._previous(after)
        if after == "root":
            self.history.add(message, item_id=item_id)
            self.history.move_to_front(item_id)
            previous = None
        else:
            self.history.add(message, item_id=item_id, after=after)
        self._items[item_id] = ItemRecord(item_id, wire_item)
        events = [
            self._event("conversation.item.added", previous_item_id=previous, item=wire_item),
            self._event("conversation.item.done", previous_item_id=previous, item=wire_item),
        ]
        return Output(events, commands)

    def _previous(self, after: str | None) -> str | None:
        if after is not None and after != "root":
            return after
        items = self.history.items
        return items[-1].id if items else None

    def _previous_of(self, item_id: str) -> str | None:
        """The item before ``item_id`` in the conversation (the last one if it is not in yet)."""
        ids = [i.id for i in self.history.items]
        if item_id not in ids:
            return ids[-1] if ids else None
        index = ids.index(item_id)
        return ids[index - 1] if index > 0 else None

    def _response_create(self, event: wire.ResponseCreateEvent) -> Output:
        if self.kind == "transcription":
            raise wire.ProtocolError(
                "a transcription session does not create responses",
                code="invalid_request_error",
                event_id=event.event_id,
            )
        params = event.response
        options = self._defaults()
        if params is None:
            return Output(commands=[CreateResponse(options, event.event_id)])
        if params.conversation == "none" or params.input is not None:
            raise wire.ProtocolError(
                "out-of-band responses (conversation: none, input) are not supported yet",
                param="response.conversation"
                if params.conversation == "none"
                else "response.input",
                code="unsupported_parameter",
                event_id=event.event_id,
            )
        changes: dict[str, Any] = {}
        if params.output_modalities is not None:
            changes["audio"] = params.output_modalities == ["audio"]
        if params.instructions is not None:
            changes["instructions"] = params.instructions
        if params.prompt is not None:
            changes["instructions"] = self._resolve_prompt(
                params.prompt.model_dump(mode="json"), event.event_id
            )
        if params.tools is not None:
            changes["tools"] = tuple(
                ToolSpec(t.name, t.description or "", t.parameters or {}) for t in params.tools
            )
        if params.tool_choice is not None:
            changes["tool_choice"] = _tool_choice(params.model_dump(mode="json")["tool_choice"])
        if params.max_output_tokens is not None:
            changes["max_output_tokens"] = (
                None if params.max_output_tokens == "inf" else int(params.max_output_tokens)
            )
        if params.audio is not None and params.audio.output is not None:
            voice = params.audio.output.voice
            if voice is not None:
                changes["voice"] = _voice_name(voice if isinstance(voice, str) else voice.id)
        options = replace(options, **changes)
        return Output(commands=[CreateResponse(options, event.event_id, params.metadata)])

    # --- results of commands -------------------------------------------------------------------

    def command_done(self, command: Command, result: object = None) -> Output:
        """What the client hears once the pipeline carried out ``command``."""
        match command:
            case ClearInput():
                self._buffer_ms = 0.0
                return Output([self._event("input_audio_buffer.cleared")])
            case Truncate(item_id=item_id, audio_end_ms=ms):
                record = self._items.get(item_id)
                if record is not None and isinstance(result, str):
                    _set_text(record, result)
                return Output(
                    [
                        self._event(
                            "conversation.item.truncated",
                            item_id=item_id,
                            content_index=0,
                            audio_end_ms=ms,
                        )
                    ]
                )
            case TranscribeItem(item_id=item_id):
                record = self._items.get(item_id)
                if record is not None and isinstance(result, str):
                    for part in record.wire["content"]:
                        if part["type"] == "input_audio" and part["transcript"] is None:
                            part["transcript"] = result
                    if self.history.get(item_id) is not None:
                        self.history.replace_text(item_id, result)
                return Output()
            case CancelResponse() if result is None:
                raise wire.ProtocolError(
                    "there is no response in progress to cancel",
                    code="response_cancel_not_active",
                    event_id=command.event_id,
                )
            case (
                PushAudio()
                | CommitInput()
                | Configure()
                | CreateResponse()
                | CancelResponse()
                | ClearOutput()
            ):
                return Output()
            case _:
                assert_never(command)

    def command_failed(self, command: Command, exc: ParleyError) -> Output:
        return Output([self.error(exc, getattr(command, "event_id", None))])

    # --- pipeline events -----------------------------------------------------------------------

    def pipeline_event(self, event: PipelineEvent) -> Output:
        """A pipeline event in; the server events it means out."""
        match event:
            case SpeechStarted(item_id=item_id, audio_start_ms=start):
                self._idle_deadline_ms = None
                return self._out(
                    "input_audio_buffer.speech_started", item_id=item_id, audio_start_ms=int(start)
                )
            case SpeechStopped(item_id=item_id, audio_end_ms=end):
                return self._out(
                    "input_audio_buffer.speech_stopped", item_id=item_id, audio_end_ms=int(end)
                )
            case InputCommitted(item_id=item_id, audio_ms=audio_ms):
                self._buffer_ms = 0.0
                previous = self._previous_of(item_id)
                wire_item = user_item(item_id, [{"type": "input_audio", "transcript": None}])
                self._items[item_id] = ItemRecord(
                    item_id, wire_item, extra={"audio_s": audio_ms / 1000}
                )
                return Output(
                    [
                        self._event(
                            "input_audio_buffer.committed",
                            item_id=item_id,
                            previous_item_id=previous,
                        ),
                        self._event(
                            "conversation.item.added", item=wire_item, previous_item_id=previous
                        ),
                    ]
                )
            case TranscriptPartial(item_id=item_id, text=text):
                return self._transcript_delta(item_id, text)
            case TranscriptFinal(item_id=item_id, text=text):
                return self._transcript_final(item_id, text)
            case StageError(stage="asr", turn_id=_, error=error):
                return self._transcript_failed(error)
            case StageError(error=error):
                return Output([self.error(error)])
            case ResponseStarted():
                return self._response_started(event)
            case ResponseTextDelta():
                return self._response_text(event)
            case ResponseAudio():
                return self._response_audio(event)
            case ResponseToolCall():
                return self._response_tool_call(event)
            case ResponseDone():
                return self._response_done(event)
            case PlaybackInterrupted(item_id=item_id, heard_text=text):
                record = self._items.get(item_id)
                if record is not None:
                    _set_text(record, text)
                return Output()
            case _:
                assert_never(event)

    def _out(self, kind: str, **fields: Any) -> Output:
        return Output([self._event(kind, **fields)])

    def _transcription_on(self) -> bool:
        return self._audio("input").get("transcription") is not None

    def _transcript_delta(self, item_id: str, text: str) -> Output:
        before = self._partials.get(item_id, "")
        self._partials[item_id] = text
        if not self._transcription_on() or not text.startswith(before) or text == before:
            return Output()  # deltas only ever append; a revised hypothesis waits for the final
        return self._out(
            "conversation.item.input_audio_transcription.delta",
            item_id=item_id,
            content_index=0,
            delta=text[len(before) :],
        )

    def _transcript_final(self, item_id: str, text: str) -> Output:
        self._partials.pop(item_id, None)
        record = self._items.get(item_id)
        if record is None:
            return Output()
        record.wire["content"][0]["transcript"] = text
        events = []
        if self._transcription_on():
            audio_s = record.extra.get("audio_s", 0.0)
            events.append(
                self._event(
                    "conversation.item.input_audio_transcription.completed",
                    item_id=item_id,
                    content_index=0,
                    transcript=text,
                    usage={"type": "duration", "seconds": round(audio_s, 3)},
                )
            )
        events.append(
            self._event("conversation.item.done", item=record.wire, previous_item_id=None)
        )
        return Output(events)

    def _transcript_failed(self, error: ParleyError) -> Output:
        item_id = next(reversed(self._items), None)
        if item_id is None or not self._transcription_on():
            return Output([self.error(error)])
        return self._out(
            "conversation.item.input_audio_transcription.failed",
            item_id=item_id,
            content_index=0,
            error={
                "type": "server_error",
                "code": error.code,
                "message": error.message,
                "param": error.param,
            },
        )

    def _response_started(self, event: ResponseStarted) -> Output:
        out_cfg = self._audio("output")
        limit = self.config.get("max_output_tokens", "inf")
        state = _ResponseState(
            event.response_id,
            event.item_id,
            audio=event.audio,
            metadata=self._metadata.pop(event.response_id, None),
            voice=str(out_cfg["voice"]),
            output_format=out_cfg["format"],
            max_output_tokens=limit,
        )
        self._responses[event.response_id] = state
        return self._out("response.created", response=self._response_obj(state, "in_progress"))

    def _response_obj(self, state: _ResponseState, status: Any, **kw: Any) -> dict[str, Any]:
        return response_object(
            state.id,
            status=status,
            conversation_id=self.conversation_id,
            modalities=["audio"] if state.audio else ["text"],
            output=state.output,
            voice=state.voice,
            output_format=state.output_format,
            max_output_tokens=state.max_output_tokens,
            metadata=state.metadata,
            **kw,
        )

    def response_requested(self, response_id: str, metadata: dict[str, str] | None) -> None:
        """The runner started a response for ``response.create``: remember its metadata."""
        if metadata:
            self._metadata[response_id] = metadata

    def _open_message(self, state: _ResponseState) -> list[dict[str, Any]]:
        if state.message_open:
            return []
        state.message_open = True
        item = assistant_item(state.item_id, "in_progress", audio=state.audio)
        previous = self._previous_of(state.item_id)
        self._items[state.item_id] = ItemRecord(state.item_id, item)
        part = {"type": "audio", "transcript": ""} if state.audio else {"type": "text", "text": ""}
        index = len(state.output)
        state.output.append(item)
        return [
            self._event(
                "response.output_item.added", response_id=state.id, output_index=index, item=item
            ),
            self._event("conversation.item.added", item=item, previous_item_id=previous),
            self._event(
                "response.content_part.added",
                response_id=state.id,
                item_id=state.item_id,
                output_index=index,
                content_index=0,
                part=part,
            ),
        ]

    def _response_text(self, event: ResponseTextDelta) -> Output:
        state = self._responses.get(event.response_id)
        if state is None:
            return Output()
        events = self._open_message(state)
        state.text += event.text
        kind = (
            "response.output_audio_transcript.delta"
            if state.audio
            else "response.output_text.delta"
        )
        events.append(
            self._event(
                kind,
                response_id=state.id,
                item_id=state.item_id,
                output_index=0,
                content_index=0,
                delta=event.text,
            )
        )
        return Output(events)

    def _response_audio(self, event: ResponseAudio) -> Output:
        state = self._responses.get(event.response_id)
        if state is None:
            return Output()
        events = self._open_message(state)
        state.audio_ms += event.frame.duration_ms
        data = encode_wire(event.frame, self.output_format)
        events.append(
            self._event(
                "response.output_audio.delta",
                response_id=state.id,
                item_id=state.item_id,
                output_index=0,
                content_index=0,
                delta=b64encode_audio(data),
            )
        )
        return Output(events)

    def _response_tool_call(self, event: ResponseToolCall) -> Output:
        state = self._responses.get(event.response_id)
        if state is None:
            return Output()
        index = len(state.output)
        pending = function_call_item(
            event.item_id, "in_progress", call_id=event.call_id, name=event.name, arguments=""
        )
        done = function_call_item(
            event.item_id,
            "completed",
            call_id=event.call_id,
            name=event.name,
            arguments=event.arguments,
        )
        state.output.append(done)
        self._items[event.item_id] = ItemRecord(event.item_id, done)
        previous = self._previous_of(event.item_id)
        common = {
            "response_id": state.id,
            "item_id": event.item_id,
            "output_index": index,
            "call_id": event.call_id,
        }
        return Output(
            [
                self._event(
                    "response.output_item.added",
                    response_id=state.id,
                    output_index=index,
                    item=pending,
                ),
                self._event("conversation.item.added", item=pending, previous_item_id=previous),
                self._event(
                    "response.function_call_arguments.delta", delta=event.arguments, **common
                ),
                self._event(
                    "response.function_call_arguments.done",
                    arguments=event.arguments,
                    name=event.name,
                    **common,
                ),
                self._event(
                    "response.output_item.done", response_id=state.id, output_index=index, item=done
                ),
                self._event("conversation.item.done", item=done, previous_item_id=previous),
            ]
        )

    def _response_done(self, event: ResponseDone) -> Output:
        state = self._responses.pop(event.response_id, None)
        if state is None:
            return Output()
        events: list[dict[str, Any]] = []
        status = event.status
        if state.message_open:
            item_status: Literal["completed", "incomplete"] = (
                "completed" if status == "completed" else "incomplete"
            )
            text = state.text
            item = assistant_item(state.item_id, item_status, audio=state.audio, text=text)
            state.output[0] = item
            self._items[state.item_id].wire = item
            self._items[state.item_id].extra["audio_ms"] = state.audio_ms
            common = {
                "response_id": state.id,
                "item_id": state.item_id,
                "output_index": 0,
                "content_index": 0,
            }
            if state.audio:
                events.append(self._event("response.output_audio.done", **common))
                events.append(
                    self._event("response.output_audio_transcript.done", transcript=text, **common)
                )
                part = {"type": "audio", "transcript": text}
            else:
                events.append(self._event("response.output_text.done", text=text, **common))
                part = {"type": "text", "text": text}
            events.append(self._event("response.content_part.done", part=part, **common))
            events.append(
                self._event(
                    "response.output_item.done", response_id=state.id, output_index=0, item=item
                )
            )
            events.append(self._event("conversation.item.done", item=item, previous_item_id=None))
        error = None
        if event.error is not None:
            error = {
                "type": "server_error",
                "code": event.error.code,
                "message": event.error.message,
            }
        audio_tokens = 0
        usage = usage_object(event.usage, audio_out_tokens=audio_tokens)
        events.append(
            self._event(
                "response.done",
                response=self._response_obj(
                    state, status, usage=usage, reason=event.reason, error=error
                ),
            )
        )
        events.append(self._event("rate_limits.updated", rate_limits=self._rate_limits()))
        if self.timeline:
            events.append(
                self._event(
                    "parley.turn.timeline",
                    response_id=state.id,
                    item_id=state.item_id,
                    status=status,
                    audio_ms=round(state.audio_ms, 1),
                    **event.timeline.to_dict(),
                    _first_audio_out_ns=event.timeline.marks.get("first_audio_out"),
                )
            )
        td = self._audio("input").get("turn_detection") or {}
        idle = td.get("idle_timeout_ms")
        if status == "completed" and idle:
            self._idle_deadline_ms = self._input_ms + event.audio_ms + idle
            self._buffer_ms = 0.0
        return Output(events)


def _set_text(record: ItemRecord, text: str) -> None:
    for part in record.wire.get("content", []):
        if part["type"] == "output_audio":
            part["transcript"] = text
        elif part["type"] == "output_text":
            part["text"] = text


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Partial update: keys sent replace, nested objects merge, ``None`` clears."""
    out = dict(base)
    for key, value in update.items():
        if (
            isinstance(value, dict)
            and isinstance(out.get(key), dict)
            and key
            not in ("format", "turn_detection", "transcription", "tool_choice", "noise_reduction")
        ):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _wire_format(fmt: dict[str, Any]) -> WireFormat:
    return parse_wire_format(fmt["type"], fmt.get("rate"), param="audio.format")


def _tool_choice(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", "auto"))
    return str(value)


def _voice_name(value: Any) -> str:
    return str(value["id"]) if isinstance(value, dict) else str(value)
