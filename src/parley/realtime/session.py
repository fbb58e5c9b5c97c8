"""The Realtime protocol session, sans I/O: a state machine.

:class:`RealtimeSession` takes client messages (raw JSON), the pipeline's events and the
outcomes of the commands it asked for, and returns :class:`Output`: server events (dicts ready
for ``json.dumps``), :data:`~parley.realtime.commands.Command` s for the pipeline, and the ids
of responses whose queued audio must not be sent any more. It never awaits a socket or a model;
the transport adapter (:mod:`parley.server.realtime_ws`) is a thin loop around it, so every
protocol behaviour, races included, is tested synchronously and table-driven.

Its state is three things, each kept once: the configuration, a typed
:class:`~parley.realtime.wire.SessionConfig` validated only at ``session.update``
(:mod:`parley.realtime.config`); the conversation, the pipeline's
:class:`~parley.pipeline.history.History`, the one item registry (each item carries what the model
sees and, as ``view``, what the client was shown); and the active response with its explicit phase
(:mod:`parley.realtime.responses`). The session, not the pipeline, decides when a response starts
and allocates its ids, so a ``response.cancel`` can never race the response's creation.

Beta clients get the same session; their events are renamed on the way in and out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection
from typing import Any, Literal, assert_never

from pydantic import ValidationError

from parley.audio.formats import b64decode_audio, decode_wire
from parley.audio.frames import Frame
from parley.config import Settings
from parley.engines.base import ContentPart, Message
from parley.errors import (
    ClientError,
    Code,
    NotFoundError,
    ParleyError,
    ProtocolError,
    as_parley_error,
    error_event,
)
from parley.ids import new_id
from parley.pipeline.events import (
    BudgetWarning,
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
from parley.pipeline.options import ResponseOptions
from parley.realtime import config as cfg
from parley.realtime import wire
from parley.realtime.beta import server_event_to_beta
from parley.realtime.commands import (
    CancelResponse,
    ClearInput,
    ClearOutput,
    Command,
    CommitInput,
    Configure,
    Output,
    PushAudio,
    StartResponse,
    TranscribeItem,
    Truncate,
)
from parley.realtime.inputs import Inputs
from parley.realtime.items import add_client_item, check_truncate, event, set_item_text, shown
from parley.realtime.responses import ActiveResponse, Phase, Trigger

__all__ = ["Output", "PromptResolver", "RealtimeSession"]

log = logging.getLogger("parley.realtime")

# Resolves a stored prompt template: (id, version, variables) -> instructions.
PromptResolver = Callable[[str, str | None, dict[str, Any]], str | tuple[ContentPart, ...]]


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
        voices: Collection[str] = (),
        languages: Collection[str] = (),
        prompts: PromptResolver | None = None,
        timeline: bool = False,
        rate_limits: Callable[[], list[dict[str, Any]]] | None = None,
        admit: Callable[[], ParleyError | None] | None = None,
    ) -> None:
        self.defaults = cfg.SessionDefaults.from_settings(
            settings,
            kind=kind,
            model=model,
            asr_model=asr_model,
            voices=voices,
            languages=languages,
        )
        self.history = history
        self.kind = kind
        self.beta = beta
        self.vision = vision
        self.id = new_id("sess")
        self.conversation_id = new_id("conv")
        self.expires_at = cfg.new_expiry()
        self._prompts = prompts
        # parley's extension: a ``parley.turn.timeline`` event after each response.done.
        self.timeline = timeline
        self._rate_limits = rate_limits or list
        self._admit = admit  # the budget's word before a response: None, or why not
        self.config = cfg.initial_config(self.defaults)
        # Whether the client asked for transcription itself (a transcription session always
        # does): only then are partial transcripts decoded, to send as deltas.
        self._deltas = kind == "transcription"
        self._instructions: str | tuple[ContentPart, ...] = self.defaults.instructions
        self._response: ActiveResponse | None = None
        # A turn that ended while a response was still playing (interrupt_response off).
        self._queued_turn: str | None = None
        self.inputs = Inputs(history)
        self._spoken_ms: dict[str, float] = {}  # assistant item -> milliseconds of its audio

    # --- views -------------------------------------------------------------------------------

    @property
    def phase(self) -> Phase:
        return Phase.IDLE if self._response is None else self._response.phase

    @property
    def session_object(self) -> dict[str, Any]:
        return cfg.session_object(self.config, session_id=self.id, expires_at=self.expires_at)

    def encode(self, server_event: dict[str, Any]) -> dict[str, Any] | None:
        """The event as this client's protocol version names it (None: beta has no such event)."""
        if not self.beta or server_event["type"].startswith("parley."):
            return server_event
        return server_event_to_beta(server_event)

    def error(self, exc: ParleyError, event_id: str | None = None) -> dict[str, Any]:
        return error_event(exc, event_id)

    def configure(self) -> Configure:
        """The command that brings the pipeline in line with the session's configuration."""
        return cfg.configure(self.config, self.defaults, self._instructions, deltas=self._deltas)

    def open(self) -> Output:
        """``session.created`` and the initial configuration."""
        return Output([self.created()], [self.configure()])

    def created(self) -> dict[str, Any]:
        """``session.created`` as the session is now (also for a wire attaching later)."""
        return event("session.created", session=self.session_object)

    # --- client events -----------------------------------------------------------------------

    def receive(self, raw: str | bytes) -> Output:
        """One client message in; the server events and pipeline commands it causes out.

        Whatever the message, the session goes on: a fault of the client's is an ``error``
        event naming the parameter, and so is (as a ``server_error``) a bug of parley's.
        """
        event_id: str | None = None
        try:
            client_event = wire.parse_client_event(raw, beta=self.beta)
            event_id = client_event.event_id
            return self._dispatch(client_event)
        except Exception as exc:  # the session must survive any one message
            error = as_parley_error(exc)
            if not isinstance(exc, ParleyError | ValidationError):
                log.exception("session %s: %s failed", self.id, wire.event_type_of(raw))
            return Output([self.error(error, error.event_id or event_id)])

    def _dispatch(self, ev: wire.ClientEvent) -> Output:
        match ev:
            case wire.SessionUpdateEvent():
                return self._session_update(ev)
            case wire.InputAudioBufferAppendEvent():
                return self._append(ev)
            case wire.InputAudioBufferCommitEvent():
                return Output(commands=[CommitInput(ev.event_id)])
            case wire.InputAudioBufferClearEvent():
                return Output(commands=[ClearInput(ev.event_id)])
            case wire.ConversationItemCreateEvent():
                return self._item_create(ev)
            case wire.ConversationItemRetrieveEvent():
                item = shown(self.history, ev.item_id, ev.event_id)
                return Output([event("conversation.item.retrieved", item=item.view)])
            case wire.ConversationItemTruncateEvent():
                return self._truncate(ev)
            case wire.ConversationItemDeleteEvent():
                shown(self.history, ev.item_id, ev.event_id)
                self.history.delete(ev.item_id)
                self._spoken_ms.pop(ev.item_id, None)
                return Output([event("conversation.item.deleted", item_id=ev.item_id)])
            case wire.ResponseCreateEvent():
                return self._response_create(ev)
            case wire.ResponseCancelEvent():
                return self._response_cancel(ev)
            case wire.OutputAudioBufferClearEvent():
                return Output(commands=[ClearOutput(ev.event_id)])
            case _:
                assert_never(ev)

    def _session_update(self, ev: wire.SessionUpdateEvent) -> Output:
        update = ev.session
        new = cfg.updated_config(self.config, update, self.defaults, ev.event_id)
        sent = update.model_fields_set
        instructions = self._instructions
        if "prompt" in sent and update.prompt is not None:
            instructions = self._resolve_prompt(update.prompt, ev.event_id)
            if isinstance(instructions, str) and "instructions" not in sent:
                new = new.model_copy(update={"instructions": instructions})
        elif "instructions" in sent or "prompt" in sent:
            instructions = new.instructions or ""
        self.config = new
        self._instructions = instructions
        self._deltas = cfg.wants_deltas(update, self._deltas, self.kind)
        return Output([event("session.updated", session=self.session_object)], [self.configure()])

    def _resolve_prompt(
        self, prompt: wire.PromptConfig, event_id: str | None
    ) -> str | tuple[ContentPart, ...]:
        if self._prompts is None:
            raise ProtocolError(
                "this server has no prompt templates",
                param="prompt.id",
                code=Code.INVALID_PROMPT,
                event_id=event_id,
            )
        variables = prompt.model_dump(mode="json")["variables"] or {}
        try:
            return self._prompts(prompt.id, prompt.version, variables)
        except ParleyError as exc:
            raise ProtocolError(
                exc.message, param=exc.param or "prompt", code=exc.code, event_id=event_id
            ) from exc

    def _append(self, ev: wire.InputAudioBufferAppendEvent) -> Output:
        data = b64decode_audio(ev.audio)
        try:
            frame = decode_wire(data, cfg.input_format(self.config))
        except ClientError as exc:
            raise ProtocolError(
                exc.message, param="audio", code=exc.code, event_id=ev.event_id
            ) from exc
        return self.append_audio(frame)

    def append_audio(self, frame: Frame) -> Output:
        """Input audio in the input format's rate, from the events or apart from them (RTP)."""
        out = Output(commands=[PushAudio(frame)])
        if self.inputs.appended(frame.duration_ms) and self.phase is Phase.IDLE:
            # The caller stayed silent past idle_timeout_ms: an empty user turn, then a reply.
            out.events.append(self.inputs.timed_out())
            out.extend(self._create(cfg.response_options(self.config)))
        return out

    def _item_create(self, ev: wire.ConversationItemCreateEvent) -> Output:
        events, audio = add_client_item(
            self.history, ev, vision=self.vision, input_format=cfg.input_format(self.config)
        )
        if audio is None:
            return Output(events)
        # Recognised in the background: a response.create meanwhile waits for it.
        item_id = events[0]["item"]["id"]
        self.inputs.awaiting(item_id)
        return Output(events, [TranscribeItem(item_id, audio, ev.event_id)])

    def _truncate(self, ev: wire.ConversationItemTruncateEvent) -> Output:
        check_truncate(self.history, ev, self._spoken_ms.get(ev.item_id))
        return Output(commands=[Truncate(ev.item_id, ev.audio_end_ms, ev.event_id)])

    # --- responses: create and cancel ---------------------------------------------------------

    def _response_create(self, ev: wire.ResponseCreateEvent) -> Output:
        if self.kind == "transcription":
            raise ProtocolError(
                "a transcription session does not create responses",
                code=Code.UNSUPPORTED_SESSION_TYPE,
                event_id=ev.event_id,
            )
        if self._response is not None:
            raise ClientError(
                f"Conversation already has an active response in progress: "
                f"{self._response.id}. Wait until the response is finished before creating "
                f"a new one.",
                code=Code.CONVERSATION_ALREADY_HAS_ACTIVE_RESPONSE,
                event_id=ev.event_id,
            )
        options, metadata = cfg.response_overrides(
            self.config, self.defaults, ev, self._resolve_prompt
        )
        self.inputs.claimed |= self.inputs.transcribing
        return self._create(options, metadata=metadata, event_id=ev.event_id)

    def _create(
        self,
        options: ResponseOptions,
        *,
        metadata: dict[str, str] | None = None,
        turn_id: str | None = None,
        event_id: str | None = None,
    ) -> Output:
        """IDLE -> TRANSCRIBING or GENERATING: ``response.created``, and the pipeline starts it
        once no committed turn is still being transcribed. Past a hard budget: an error and
        no response."""
        if (refusal := self._admit() if self._admit else None) is not None:
            return Output([self.error(refusal, event_id)])
        limit = self.config.max_output_tokens
        resp = ActiveResponse(
            id=new_id("resp"),
            item_id=new_id("item"),
            options=options,
            conversation_id=self.conversation_id,
            voice=options.voice or cfg.voice_name(cfg.output_voice(self.config)),
            output_format=cfg.output_format(self.config),
            format_object=cfg.output_format_object(self.config),
            max_output_tokens="inf" if limit is None else limit,
            metadata=metadata,
            turn_id=turn_id,
        )
        self._response = resp
        self.inputs.idle_deadline_ms = None
        out = Output([resp.created(event)])
        if self.inputs.transcribing:
            resp.waiting = set(self.inputs.transcribing)
            resp.move(Trigger.CREATE_WAITING)
            return out
        resp.move(Trigger.CREATE)
        out.commands.append(StartResponse(resp.id, resp.item_id, options, turn_id, event_id))
        return out

    def _response_cancel(self, ev: wire.ResponseCancelEvent) -> Output:
        resp = self._response
        wanted = ev.response_id
        if resp is not None and wanted is not None and wanted != resp.id:
            raise NotFoundError(
                f"response {wanted} is not in progress (the active response is {resp.id}); "
                "nothing was cancelled",
                param="response_id",
                code=Code.RESPONSE_CANCEL_NOT_ACTIVE,
                event_id=ev.event_id,
            )
        if resp is None:
            raise ClientError(
                "Cancellation failed: no active response found",
                param="response_id" if wanted else None,
                code=Code.RESPONSE_CANCEL_NOT_ACTIVE,
                event_id=ev.event_id,
            )
        return self._cancel(resp, "client_cancelled", ev.event_id)

    def _cancel(self, resp: ActiveResponse, reason: str, event_id: str | None = None) -> Output:
        match resp.phase:
            case Phase.TRANSCRIBING:
                resp.move(Trigger.CANCEL)
                return self._finish(resp, "cancelled", reason=reason)
            case Phase.GENERATING:
                resp.move(Trigger.CANCEL)
                return Output(commands=[CancelResponse(resp.id, reason, event_id)], stale=[resp.id])
            case Phase.CANCELLING | Phase.IDLE:
                return Output()  # already on its way out
            case _:
                assert_never(resp.phase)

    def _finish(
        self,
        resp: ActiveResponse,
        status: Literal["completed", "cancelled", "incomplete", "failed"],
        *,
        reason: str | None = None,
        done: ResponseDone | None = None,
        error: ParleyError | None = None,
    ) -> Output:
        """The response's closing events; the session is IDLE after (the phase must be too)."""
        assert resp.phase is Phase.IDLE
        self._response = None
        out = Output(stale=[resp.id] if status == "cancelled" else [])
        previous = self.history.previous_shown(resp.item_id)
        closing, item = resp.close_message(event, status, previous)
        out.events += closing
        shown = self.history.get(resp.item_id)
        if item is not None and shown is not None:
            shown.view = item
            self._spoken_ms[resp.item_id] = resp.audio_ms
        usage = done.usage if done is not None else None
        out.events.append(resp.done(event, status, reason=reason, usage=usage, error=error))
        out.events.append(event("rate_limits.updated", rate_limits=self._rate_limits()))
        if self.timeline and done is not None:
            out.events.append(resp.timeline_event(event, status, done.timeline, done.cost_usd))
        if status == "completed" and done is not None:
            self.inputs.replied(done.audio_ms, cfg.idle_timeout_ms(self.config))
        if self._queued_turn is not None:
            turn, self._queued_turn = self._queued_turn, None
            out.extend(self._create(cfg.response_options(self.config), turn_id=turn))
        return out

    # --- outcomes of commands -----------------------------------------------------------------

    def command_done(self, command: Command, result: object = None) -> Output:
        """What the client hears once the pipeline carried out ``command``."""
        match command:
            case ClearInput():
                self.inputs.buffer_ms = 0.0
                return Output([event("input_audio_buffer.cleared")])
            case Truncate(item_id=item_id, audio_end_ms=ms):
                item = self.history.get(item_id)
                if item is not None and item.view is not None and isinstance(result, str):
                    set_item_text(item.view, result)
                return Output(
                    [
                        event(
                            "conversation.item.truncated",
                            item_id=item_id,
                            content_index=0,
                            audio_end_ms=ms,
                        )
                    ]
                )
            case TranscribeItem(item_id=item_id):
                text = result.strip() if isinstance(result, str) else ""
                if self.history.get(item_id) is not None:
                    self.history.replace_text(item_id, text)
                return self._transcribed(None, item_id, text, None, announce=False)
            case CancelResponse(response_id=rid) if result is False:
                # Nothing was running under that id: the pipeline will send no ResponseDone.
                resp = self._response
                if resp is not None and resp.id == rid and resp.phase is Phase.CANCELLING:
                    resp.move(Trigger.FAIL)
                    return self._finish(resp, "cancelled", reason=command.reason)
                return Output()
            case PushAudio() | CommitInput() | Configure() | StartResponse() | CancelResponse():
                return Output()
            case ClearOutput():
                return Output()
            case _:
                assert_never(command)

    def command_failed(self, command: Command, exc: ParleyError) -> Output:
        if isinstance(command, TranscribeItem):
            return self._transcribed(None, command.item_id, None, exc, announce=False)
        out = Output([self.error(exc, getattr(command, "event_id", None))])
        resp = self._response
        rid = getattr(command, "response_id", None)
        if (
            isinstance(command, StartResponse | CancelResponse)
            and resp is not None
            and resp.id == rid
            and resp.phase in (Phase.GENERATING, Phase.CANCELLING)
        ):
            resp.move(Trigger.FAIL)
            status: Literal["failed", "cancelled"] = (
                "cancelled" if isinstance(command, CancelResponse) else "failed"
            )
            out.extend(self._finish(resp, status, error=exc))
        return out

    # --- pipeline events ----------------------------------------------------------------------

    def pipeline_event(self, ev: PipelineEvent) -> Output:
        """A pipeline event in; the server events it means out."""
        match ev:
            case SpeechStarted(item_id=item_id, audio_start_ms=start):
                out = Output([self.inputs.speech_started(item_id, start)])
                td = cfg.turn_detection(self.config, self.defaults)
                resp = self._response
                if resp is not None and resp.phase is Phase.TRANSCRIBING and td.interrupt_response:
                    out.extend(self._cancel(resp, "turn_detected"))
                return out
            case SpeechStopped(item_id=item_id, audio_end_ms=end):
                return Output([self.inputs.speech_stopped(item_id, end)])
            case InputCommitted(item_id=item_id, audio_ms=audio_ms):
                return Output(self.inputs.committed(item_id, audio_ms))
            case TranscriptPartial(item_id=item_id, text=text):
                return Output(self.inputs.partial(item_id, text, cfg.transcription_on(self.config)))
            case TranscriptFinal():
                return self._transcribed(ev.turn_id, ev.item_id, ev.text, None)
            case StageError(stage="asr", item_id=item_id) if item_id is not None:
                return self._transcribed(ev.turn_id, item_id, None, ev.error)
            case StageError(error=error):
                return Output([self.error(error)])
            case BudgetWarning(message=message):
                return Output([event("parley.budget.warning", message=message)])
            case ResponseStarted():
                return Output()  # response.created went out when the session created it
            case ResponseTextDelta(response_id=rid, text=text):
                resp = self._generating(rid)
                if resp is None:
                    return Output()
                out = self._open_message(resp)
                out.events.append(resp.text_delta(event, text))
                return out
            case ResponseAudio(response_id=rid, frame=frame):
                resp = self._generating(rid)
                if resp is None:
                    return Output()
                out = self._open_message(resp)
                out.events.append(resp.audio_delta(event, frame))
                return out
            case ResponseToolCall():
                return self._tool_call(ev)
            case ResponseDone():
                resp = self._response
                if resp is None or resp.id != ev.response_id or resp.phase is Phase.TRANSCRIBING:
                    return Output()  # a response the client was already told has ended
                resp.move(Trigger.DONE)
                return self._finish(resp, ev.status, reason=ev.reason, done=ev, error=ev.error)
            case PlaybackInterrupted(response_id=rid, item_id=item_id, heard_text=text):
                item = self.history.get(item_id)
                if item is not None and item.view is not None:
                    set_item_text(item.view, text)
                return Output(stale=[rid])
            case _:
                assert_never(ev)

    def _generating(self, response_id: str) -> ActiveResponse | None:
        """The active response if it is ``response_id`` and its output is still wanted."""
        resp = self._response
        if resp is None or resp.id != response_id or resp.phase is not Phase.GENERATING:
            return None
        return resp

    def _open_message(self, resp: ActiveResponse) -> Output:
        if resp.message_index is not None:
            return Output()
        item = self.history.get(resp.item_id)
        if item is None:  # the pipeline adds it when it starts; a client may have deleted it
            item = self.history.add(Message("assistant", ""), item_id=resp.item_id)
        events = resp.open_message(event, self.history.previous_shown(resp.item_id))
        item.view = resp.output[resp.message_index or 0]
        return Output(list(events))

    def _tool_call(self, ev: ResponseToolCall) -> Output:
        resp = self._response
        if resp is None or resp.id != ev.response_id or resp.phase is Phase.TRANSCRIBING:
            return Output()
        item = self.history.get(ev.item_id)
        previous = self.history.previous_shown(ev.item_id)
        events, done = resp.tool_call(
            event, ev.item_id, ev.call_id, ev.name, ev.arguments, previous
        )
        if item is not None:
            item.view = done
        return Output(list(events))

    def _transcribed(
        self,
        turn_id: str | None,
        item_id: str,
        text: str | None,
        error: ParleyError | None,
        *,
        announce: bool = True,
    ) -> Output:
        """A user item's transcript is in, or its recognition failed: tell the client, then
        start the response that waited for it, or answer the turn (server_vad)."""
        heard = self.inputs.transcribed(
            item_id,
            text,
            error,
            transcription=cfg.transcription_on(self.config),
            announce=announce,
        )
        out = Output(heard.events)
        resp = self._response
        if resp is not None and resp.phase is Phase.TRANSCRIBING and item_id in resp.waiting:
            resp.waiting.discard(item_id)
            if error is not None:
                resp.move(Trigger.FAIL)
                return out.extend(self._finish(resp, "failed", error=error))
            if not resp.waiting:
                resp.move(Trigger.TRANSCRIBED)
                out.commands.append(
                    StartResponse(resp.id, resp.item_id, resp.options, resp.turn_id)
                )
            return out
        td = cfg.turn_detection(self.config, self.defaults)
        if error is None and text and td.create_response and not heard.claimed:
            if resp is None:
                out.extend(self._create(cfg.response_options(self.config), turn_id=turn_id))
            elif resp.phase in (Phase.GENERATING, Phase.CANCELLING):
                self._queued_turn = turn_id  # answered when the current response is done
        return out
