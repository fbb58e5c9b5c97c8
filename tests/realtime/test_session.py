"""The sans-I/O Realtime session, table-driven: client events and pipeline outputs in, server
events and commands out. No sockets, no engines, no event loop.

Each case is a script of steps (what the client sends, what the pipeline reports, which command
outcome comes back) and the server event types expected, in order. Every case also checks the
session's invariants: every server event validates against the official SDK's GA models; every
``response.created`` gets exactly one ``response.done``; every ``previous_item_id`` names an
item the client was shown before, or is null; no step leaves the session wedged (a response can
always be created once the last one is done).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from parley.audio.frames import Frame
from parley.config import load_settings
from parley.engines.base import Message, ToolCall, Usage
from parley.errors import ClientError, EngineError
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
from parley.pipeline.timeline import TurnTimeline
from parley.realtime.commands import (
    CancelResponse,
    ClearInput,
    Command,
    CommitInput,
    Configure,
    PushAudio,
    StartResponse,
    TranscribeItem,
    Truncate,
)
from parley.realtime.responses import TRANSITIONS, IllegalTransition, Phase, Trigger, next_phase
from parley.realtime.session import RealtimeSession

_GA: TypeAdapter[Any] | None = None


def ga() -> TypeAdapter[Any]:
    global _GA
    if _GA is None:
        from openai.types.realtime import RealtimeServerEvent

        _GA = TypeAdapter(RealtimeServerEvent)
    return _GA


VOICES = ("en-us", "en-gb", "fr-fr")


def pcm_b64(ms: int = 100) -> str:
    return base64.b64encode(np.ones(24 * ms, "<i2").tobytes()).decode()


@dataclass
class Script:
    """Runs one session; keeps what it said and what it asked for, and plays the pipeline."""

    session: RealtimeSession
    history: History
    events: list[dict[str, Any]] = field(default_factory=list)
    commands: list[Command] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)
    running: str | None = None  # the response id the scripted pipeline is generating
    item: str | None = None  # its assistant item
    turn: int = 0

    @classmethod
    def open(cls, **kw: Any) -> Script:
        history = History()
        kw.setdefault("voices", VOICES)
        session = RealtimeSession(load_settings(env={}), history, **kw)
        script = cls(session, history)
        script.take(session.open())
        script.events.clear()
        script.commands.clear()
        return script

    def take(self, out: Any) -> None:
        self.events += out.events
        self.commands += out.commands
        self.stale += out.stale
        for command in out.commands:
            if isinstance(command, StartResponse):
                self.running, self.item = command.response_id, command.item_id

    def client(self, event: dict[str, Any] | str | bytes) -> None:
        raw = event if isinstance(event, str | bytes) else json.dumps(event)
        self.take(self.session.receive(raw))

    def pipe(self, event: PipelineEvent) -> None:
        self.take(self.session.pipeline_event(event))

    def last(self, kind: type) -> Any:
        return next(c for c in reversed(self.commands) if isinstance(c, kind))

    def created_id(self) -> str:
        return str(
            next(e for e in reversed(self.events) if e["type"] == "response.created")["response"][
                "id"
            ]
        )

    def types(self) -> list[str]:
        return [e["type"] for e in self.events if e["type"] != "rate_limits.updated"]

    def errors(self) -> list[dict[str, Any]]:
        return [e["error"] for e in self.events if e["type"] == "error"]


# --- the steps --------------------------------------------------------------------------------


def _done(status: str, reason: str | None = None) -> Callable[[Script], None]:
    def step(s: Script) -> None:
        assert s.running is not None and s.item is not None
        usage = Usage(5, 3) if status == "completed" else None
        done = ResponseDone(
            s.running,
            s.item,
            None,
            status,
            reason,
            "",
            40.0,
            usage,
            TurnTimeline(),  # type: ignore[arg-type]
        )
        s.running = None
        s.pipe(done)

    return step


def _committed(s: Script) -> None:
    s.turn += 1
    s.pipe(SpeechStarted(f"t{s.turn}", f"item_u{s.turn}", 100.0))
    s.pipe(SpeechStopped(f"t{s.turn}", f"item_u{s.turn}", 900.0))
    s.pipe(InputCommitted(f"t{s.turn}", f"item_u{s.turn}", 800.0))


def _final(text: str) -> Callable[[Script], None]:
    def step(s: Script) -> None:
        item = f"item_u{s.turn}"
        if s.history.get(item) is not None:
            s.history.replace_text(item, text)
        s.pipe(TranscriptFinal(f"t{s.turn}", item, text, ()))

    return step


def _started(s: Script) -> None:
    assert s.running is not None and s.item is not None
    s.history.add(Message("assistant", ""), item_id=s.item)  # as the pipeline does
    s.pipe(ResponseStarted(s.running, s.item, None))


def _text(text: str) -> Callable[[Script], None]:
    return lambda s: s.pipe(ResponseTextDelta(s.running or "resp_x", s.item or "item_x", text))


def _audio(s: Script) -> None:
    s.pipe(
        ResponseAudio(
            s.running or "resp_x", s.item or "item_x", Frame(np.ones(960, np.int16), 24000)
        )
    )


def _tool(s: Script) -> None:
    item = s.history.add(Message("assistant", tool_calls=(ToolCall("call_1", "f", "{}"),)))
    s.pipe(ResponseToolCall(s.running or "resp_x", item.id, "call_1", "f", '{"a": 1}'))


def _cancel_done(s: Script) -> None:
    """The pipeline carried out the CancelResponse: the response ended cancelled."""
    cancel = s.last(CancelResponse)
    s.take(s.session.command_done(cancel, True))
    _done("cancelled", cancel.reason)(s)


def _cancel_noop(s: Script) -> None:
    """The pipeline had nothing running under that id (it never started)."""
    cancel = s.last(CancelResponse)
    s.running = None
    s.take(s.session.command_done(cancel, False))


def _start_failed(s: Script) -> None:
    start = s.last(StartResponse)
    s.running = None
    s.take(s.session.command_failed(start, ClientError("a response is already in progress")))


def _asr_failed(s: Script) -> None:
    s.pipe(StageError(f"t{s.turn}", "asr", EngineError("recogniser died"), f"item_u{s.turn}"))


C = dict[str, Any]
CREATE: C = {"type": "response.create"}
CANCEL: C = {"type": "response.cancel"}
TEXT_ONLY: C = {"type": "response.create", "response": {"output_modalities": ["text"]}}


def user_text(text: str = "hi", **item: Any) -> C:
    return {
        "type": "conversation.item.create",
        "item": {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": text}],
            **item,
        },
    }


def update(**session: Any) -> C:
    return {"type": "session.update", "session": {"type": "realtime", **session}}


def vad(**td: Any) -> C:
    return update(audio={"input": {"turn_detection": {"type": "server_vad", **td}}})


Step = C | str | bytes | Callable[[Script], None]
MESSAGE_OPEN = [
    "response.output_item.added",
    "conversation.item.added",
    "response.content_part.added",
]
AUDIO_CLOSE = [
    "response.output_audio.done",
    "response.output_audio_transcript.done",
    "response.content_part.done",
    "response.output_item.done",
    "conversation.item.done",
]
COMMITTED = [
    "input_audio_buffer.speech_started",
    "input_audio_buffer.speech_stopped",
    "input_audio_buffer.committed",
    "conversation.item.added",
]
TRANSCRIBED = ["conversation.item.input_audio_transcription.completed", "conversation.item.done"]


@dataclass(frozen=True)
class Case:
    name: str
    steps: list[Step]
    expect: list[str] | None = None
    phase: Phase = Phase.IDLE
    check: Callable[[Script], None] | None = None
    kw: dict[str, Any] = field(default_factory=dict)


def error_code(code: str, param: str | None = None) -> Callable[[Script], None]:
    def check(s: Script) -> None:
        (error,) = s.errors()
        assert error["code"] == code
        assert error["type"] == "invalid_request_error"
        if param is not None:
            assert error["param"] == param

    return check


def status_of_done(status: str, reason: str | None = None) -> Callable[[Script], None]:
    def check(s: Script) -> None:
        (done,) = [e for e in s.events if e["type"] == "response.done"]
        assert done["response"]["status"] == status
        if reason is not None:
            assert done["response"]["status_details"]["reason"] == reason

    return check


def commands_are(*kinds: type) -> Callable[[Script], None]:
    def check(s: Script) -> None:
        assert [type(c) for c in s.commands] == list(kinds)

    return check


def configured(predicate: Callable[[Configure], bool]) -> Callable[[Script], None]:
    def check(s: Script) -> None:
        assert predicate(s.last(Configure))

    return check


def both(*checks: Callable[[Script], None]) -> Callable[[Script], None]:
    def check(s: Script) -> None:
        for c in checks:
            c(s)

    return check


CASES = [
    # --- the response lifecycle ---------------------------------------------------------------
    Case(
        "create_text_done",
        [CREATE, _started, _text("Hello."), _done("completed")],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio_transcript.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
        check=status_of_done("completed"),
    ),
    Case(
        "create_audio_done",
        [CREATE, _started, _audio, _text("Hi"), _audio, _done("completed")],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio.delta",
            "response.output_audio_transcript.delta",
            "response.output_audio.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
    ),
    Case(
        "text_only_response",
        [TEXT_ONLY, _started, _text("Hi"), _done("completed")],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ],
    ),
    Case(
        "cancel_before_the_pipeline_reports_anything",
        [CREATE, CANCEL, _cancel_done],
        ["response.created", "response.done"],
        check=both(
            status_of_done("cancelled", "client_cancelled"),
            commands_are(StartResponse, CancelResponse),
        ),
    ),
    Case(
        "cancel_when_the_pipeline_never_started_it",
        [CREATE, CANCEL, _cancel_noop],
        ["response.created", "response.done"],
        check=status_of_done("cancelled"),
    ),
    Case(
        "late_done_after_noop_cancel_is_ignored",
        [
            CREATE,
            CANCEL,
            _cancel_noop,
            lambda s: s.pipe(
                ResponseDone(
                    s.created_id(), "item_x", None, "cancelled", None, "", 0.0, None, TurnTimeline()
                )
            ),
        ],
        ["response.created", "response.done"],
    ),
    Case(
        "cancel_while_generating",
        [CREATE, _started, _text("Hel"), CANCEL, _cancel_done],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio_transcript.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
        check=both(status_of_done("cancelled"), lambda s: s.created_id() in s.stale),
    ),
    Case(
        "output_after_cancel_is_dropped",
        [CREATE, _started, _text("a"), CANCEL, _text("b"), _audio, _cancel_done],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio_transcript.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
    ),
    Case(
        "cancel_then_create_again",
        [CREATE, CANCEL, _cancel_done, CREATE, _started, _done("completed")],
        ["response.created", "response.done", "response.created", "response.done"],
    ),
    Case(
        "double_cancel_is_harmless",
        [CREATE, _started, CANCEL, CANCEL, _cancel_done],
        ["response.created", "response.done"],
        check=commands_are(StartResponse, CancelResponse),
    ),
    Case(
        "two_creates",
        [CREATE, CREATE, _started, _done("completed")],
        ["response.created", "error", "response.done"],
        check=error_code("conversation_already_has_active_response"),
    ),
    Case(
        "create_while_cancelling",
        [CREATE, CANCEL, CREATE, _cancel_done],
        ["response.created", "error", "response.done"],
        check=error_code("conversation_already_has_active_response"),
    ),
    Case(
        "cancel_with_nothing_active",
        [CANCEL],
        ["error"],
        check=error_code("response_cancel_not_active"),
    ),
    Case(
        "cancel_after_done",
        [CREATE, _started, _done("completed"), CANCEL],
        ["response.created", "response.done", "error"],
        check=error_code("response_cancel_not_active"),
    ),
    Case(
        "cancel_of_an_unknown_response_leaves_it_alone",
        [
            CREATE,
            _started,
            {"type": "response.cancel", "response_id": "resp_nope"},
            _text("x"),
            _done("completed"),
        ],
        [
            "response.created",
            "error",
            *MESSAGE_OPEN,
            "response.output_audio_transcript.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
        check=both(
            error_code("response_cancel_not_active", "response_id"),
            status_of_done("completed"),
            commands_are(StartResponse),
        ),
    ),
    Case(
        "cancel_by_its_own_id",
        [
            CREATE,
            lambda s: s.client({"type": "response.cancel", "response_id": s.created_id()}),
            _cancel_done,
        ],
        ["response.created", "response.done"],
        check=status_of_done("cancelled"),
    ),
    Case(
        "pipeline_refuses_to_start",
        [CREATE, _start_failed],
        ["response.created", "error", "response.done"],
        check=status_of_done("failed"),
    ),
    Case(
        "failed_response_reports_its_error",
        [
            CREATE,
            _started,
            lambda s: s.pipe(
                ResponseDone(
                    s.running or "",
                    s.item or "",
                    None,
                    "failed",
                    None,
                    "",
                    0.0,
                    None,
                    TurnTimeline(),
                    EngineError("llm down"),
                )
            ),
        ],
        ["response.created", "response.done"],
        check=lambda s: (
            s.events[-2]["response"]["status_details"]["error"]["type"] == "server_error"
        ),
    ),
    Case(
        "incomplete_response",
        [CREATE, _started, _text("a"), _done("incomplete", "max_output_tokens")],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio_transcript.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
        check=status_of_done("incomplete", "max_output_tokens"),
    ),
    Case(
        "done_for_an_unknown_response_is_ignored",
        [
            lambda s: s.pipe(
                ResponseDone(
                    "resp_old", "item_old", None, "completed", None, "", 0.0, None, TurnTimeline()
                )
            )
        ],
        [],
    ),
    Case(
        "output_of_a_response_no_longer_current_is_dropped",
        [
            CREATE,
            _started,
            _done("completed"),
            lambda s: s.pipe(ResponseTextDelta("resp_gone", "item_gone", "x")),
        ],
        ["response.created", "response.done"],
    ),
    Case(
        "response_create_metadata_is_echoed",
        [
            {"type": "response.create", "response": {"metadata": {"topic": "x"}}},
            _started,
            _done("completed"),
        ],
        ["response.created", "response.done"],
        check=lambda s: all(
            e["response"]["metadata"] == {"topic": "x"}
            for e in s.events
            if e["type"].startswith("response.")
        ),
    ),
    Case(
        "response_create_bad_voice",
        [
            {
                "type": "response.create",
                "response": {"audio": {"output": {"voice": "../../etc/passwd"}}},
            }
        ],
        ["error"],
        check=error_code("invalid_value", "response.audio.output.voice"),
    ),
    Case(
        "response_create_out_of_band_unsupported",
        [{"type": "response.create", "response": {"conversation": "none"}}],
        ["error"],
        check=error_code("unsupported_parameter", "response.conversation"),
    ),
    Case(
        "transcription_session_creates_no_responses",
        [CREATE],
        ["error"],
        check=error_code("unsupported_session_type"),
        kw={"kind": "transcription"},
    ),
    # --- turns, transcripts and responses -----------------------------------------------------
    Case(
        "turn_with_auto_response",
        [_committed, _final("hello there"), _started, _done("completed")],
        [*COMMITTED, *TRANSCRIBED, "response.created", "response.done"],
        check=lambda s: s.last(StartResponse).turn_id == "t1",
    ),
    Case(
        "empty_transcript_starts_nothing",
        [_committed, _final("")],
        [*COMMITTED, *TRANSCRIBED],
        check=commands_are(),
    ),
    Case(
        "create_response_off",
        [vad(create_response=False), _committed, _final("hello")],
        ["session.updated", *COMMITTED, *TRANSCRIBED],
        check=lambda s: not any(isinstance(c, StartResponse) for c in s.commands),
    ),
    Case(
        "create_while_transcribing_waits_for_the_transcript",
        [_committed, CREATE],
        [*COMMITTED, "response.created"],
        phase=Phase.TRANSCRIBING,
        check=lambda s: not any(isinstance(c, StartResponse) for c in s.commands),
    ),
    Case(
        "transcribing_then_transcribed_starts_once",
        [_committed, CREATE, _final("hello"), _started, _done("completed")],
        [*COMMITTED, "response.created", *TRANSCRIBED, "response.done"],
        check=lambda s: sum(isinstance(c, StartResponse) for c in s.commands) == 1,
    ),
    Case(
        "cancel_while_transcribing",
        [_committed, CREATE, CANCEL, _final("hello")],
        [*COMMITTED, "response.created", "response.done", *TRANSCRIBED],
        check=both(
            status_of_done("cancelled", "client_cancelled"),
            lambda s: not any(isinstance(c, StartResponse | CancelResponse) for c in s.commands),
        ),
    ),
    Case(
        "create_again_after_cancel_while_transcribing",
        [_committed, CREATE, CANCEL, CREATE, _final("hello"), _started, _done("completed")],
        [
            *COMMITTED,
            "response.created",
            "response.done",
            "response.created",
            *TRANSCRIBED,
            "response.done",
        ],
    ),
    Case(
        "transcription_fails_while_a_response_waits",
        [_committed, CREATE, _asr_failed],
        [
            *COMMITTED,
            "response.created",
            "conversation.item.input_audio_transcription.failed",
            "response.done",
        ],
        check=status_of_done("failed"),
    ),
    Case(
        "barge_in_while_transcribing_cancels_the_waiting_response",
        [_committed, CREATE, _committed],
        [
            *COMMITTED,
            "response.created",
            "input_audio_buffer.speech_started",
            "response.done",
            *COMMITTED[1:],
        ],
        check=status_of_done("cancelled", "turn_detected"),
    ),
    Case(
        "barge_in_while_generating",
        [
            _committed,
            _final("hi"),
            _started,
            _audio,
            lambda s: s.pipe(SpeechStarted("t2", "item_u2", 2000.0)),
            _done("cancelled", "turn_detected"),
        ],
        [
            *COMMITTED,
            *TRANSCRIBED,
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio.delta",
            "input_audio_buffer.speech_started",
            *AUDIO_CLOSE,
            "response.done",
        ],
        check=both(
            status_of_done("cancelled", "turn_detected"), lambda s: s.created_id() in s.stale
        ),
    ),
    Case(
        "turn_during_a_response_with_interrupt_off_is_answered_after_it",
        [
            vad(interrupt_response=False),
            _committed,
            _final("one"),
            _started,
            _committed,
            _final("two"),
            _done("completed"),
        ],
        [
            "session.updated",
            *COMMITTED,
            *TRANSCRIBED,
            "response.created",
            *COMMITTED,
            *TRANSCRIBED,
            "response.done",
            "response.created",
        ],
        phase=Phase.GENERATING,
        check=lambda s: s.last(StartResponse).turn_id == "t2",
    ),
    Case(
        "asr_failure_without_transcription_is_an_error_event",
        [update(audio={"input": {"transcription": None}}), _committed, _asr_failed],
        ["session.updated", *COMMITTED, "error"],
        check=lambda s: s.errors()[0]["type"] == "server_error",
    ),
    Case(
        "transcript_deltas_only_append",
        [
            _committed,
            lambda s: [
                s.pipe(TranscriptPartial("t1", "item_u1", t)) for t in ("go", "go for", "go four")
            ],
            _final("go forward"),
        ],
        [
            *COMMITTED,
            "conversation.item.input_audio_transcription.delta",
            "conversation.item.input_audio_transcription.delta",
            *TRANSCRIBED,
            "response.created",
        ],
        phase=Phase.GENERATING,
        check=lambda s: (
            [e["delta"] for e in s.events if e["type"].endswith(".delta")] == ["go", " for"]
        ),
    ),
    Case(
        "transcription_usage_is_the_turn_s_audio",
        [_committed, _final("x")],
        [*COMMITTED, *TRANSCRIBED, "response.created"],
        phase=Phase.GENERATING,
        check=lambda s: s.events[4]["usage"] == {"type": "duration", "seconds": 0.8},
    ),
    Case(
        "playback_interrupted_marks_the_response_stale",
        [
            CREATE,
            _started,
            _text("Some words"),
            _audio,
            _done("completed"),
            lambda s: s.pipe(PlaybackInterrupted(s.created_id(), s.item or "", 10.0, 40.0, "Some")),
        ],
        [
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio_transcript.delta",
            "response.output_audio.delta",
            *AUDIO_CLOSE,
            "response.done",
        ],
        check=lambda s: (
            s.created_id() in s.stale
            and s.session.history.get(s.item or "").view["content"][0]["transcript"] == "Some"
        ),  # type: ignore[union-attr]
    ),
    Case(
        "idle_timeout_prompts_a_reply",
        [
            vad(idle_timeout_ms=1000),
            CREATE,
            _started,
            _audio,
            _done("completed"),
            {"type": "input_audio_buffer.append", "audio": pcm_b64(600)},
            {"type": "input_audio_buffer.append", "audio": pcm_b64(600)},
        ],
        [
            "session.updated",
            "response.created",
            *MESSAGE_OPEN,
            "response.output_audio.delta",
            *AUDIO_CLOSE,
            "response.done",
            "input_audio_buffer.timeout_triggered",
            "response.created",
        ],
        phase=Phase.GENERATING,
    ),
    # --- function calls and previous_item_id --------------------------------------------------
    Case(
        "tool_call_only_response_names_an_item_the_client_saw",
        [user_text(), CREATE, _started, _tool, _done("completed")],
        [
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "response.output_item.added",
            "conversation.item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "conversation.item.done",
            "response.done",
        ],
        check=lambda s: s.events[4]["previous_item_id"] == s.events[0]["item"]["id"],
    ),
    Case(
        "tool_call_after_text_follows_the_message",
        [user_text(), CREATE, _started, _text("Let me check."), _tool, _done("completed")],
        None,
        check=lambda s: (
            [e for e in s.events if e["type"] == "conversation.item.added"][-1]["previous_item_id"]
            == s.item
        ),
    ),
    Case(
        "function_call_output_item",
        [
            {
                "type": "conversation.item.create",
                "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
            }
        ],
        ["conversation.item.added", "conversation.item.done"],
    ),
    # --- session.update -----------------------------------------------------------------------
    Case(
        "partial_update_keeps_the_rest",
        [update(audio={"output": {"voice": "en-gb"}}), update(instructions="Be brief.")],
        ["session.updated", "session.updated"],
        check=lambda s: (
            s.events[-1]["session"]["audio"]["output"]["voice"] == "en-gb"
            and s.events[-1]["session"]["instructions"] == "Be brief."
        ),
    ),
    *(
        Case(
            f"out_of_range_{field}_{value}",
            [vad(**{field: value})],
            ["error"],
            check=error_code("invalid_value", f"session.audio.input.turn_detection.{field}"),
        )
        for field, value in (
            ("silence_duration_ms", 20000),
            ("prefix_padding_ms", 10**9),
            ("threshold", -0.5),
            ("threshold", 1.5),
            ("idle_timeout_ms", -1),
        )
    ),
    Case(
        "bad_update_changes_nothing_and_the_session_goes_on",
        [vad(silence_duration_ms=20000), update(instructions="x"), CREATE],
        ["error", "session.updated", "response.created"],
        phase=Phase.GENERATING,
        check=lambda s: (
            s.events[1]["session"]["audio"]["input"]["turn_detection"]["silence_duration_ms"] == 500
        ),
    ),
    Case(
        "voice_path_is_refused_at_update",
        [update(audio={"output": {"voice": "../../etc/passwd"}})],
        ["error"],
        check=error_code("invalid_value", "session.audio.output.voice"),
    ),
    Case(
        "unknown_voice_is_refused_at_update",
        [update(audio={"output": {"voice": "nobody"}})],
        ["error"],
        check=error_code("invalid_value", "session.audio.output.voice"),
    ),
    Case(
        "engine_voice_with_variant_is_accepted",
        [update(audio={"output": {"voice": "en-us+f3"}})],
        ["session.updated"],
        check=configured(lambda c: c.defaults.voice == "en-us+f3"),
    ),
    Case(
        "speed_out_of_range",
        [update(audio={"output": {"speed": 3.0}})],
        ["error"],
        check=error_code("invalid_value", "session.audio.output.speed"),
    ),
    Case(
        "max_output_tokens_zero",
        [update(max_output_tokens=0)],
        ["error"],
        check=error_code("invalid_value", "session.max_output_tokens"),
    ),
    Case(
        "semantic_vad_eagerness",
        [
            update(
                audio={"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "high"}}}
            )
        ],
        ["session.updated"],
        check=configured(lambda c: c.turn_detection.silence_duration_ms == 300),
    ),
    Case(
        "turn_detection_off",
        [update(audio={"input": {"turn_detection": None}})],
        ["session.updated"],
        check=configured(lambda c: c.turn_detection.type == "none"),
    ),
    Case(
        "server_vad_partial_takes_defaults",
        [vad(silence_duration_ms=400)],
        ["session.updated"],
        check=lambda s: (
            s.events[0]["session"]["audio"]["input"]["turn_detection"]
            == {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 400,
                "create_response": True,
                "interrupt_response": True,
                "idle_timeout_ms": None,
            }
        ),
    ),
    Case(
        "g711_input_format",
        [update(audio={"input": {"format": {"type": "audio/pcmu"}}})],
        ["session.updated"],
        check=configured(lambda c: c.input_rate == 8000 and c.output_rate == 24000),
    ),
    Case(
        "session_type_cannot_change",
        [{"type": "session.update", "session": {"type": "transcription"}}],
        ["error"],
        check=error_code("invalid_value", "session.type"),
    ),
    Case(
        "transcription_session_has_no_instructions",
        [{"type": "session.update", "session": {"instructions": "x"}}],
        ["error"],
        check=error_code("invalid_value", "session.instructions"),
        kw={"kind": "transcription"},
    ),
    Case(
        "prompt_without_a_store",
        [update(prompt={"id": "pmpt_1"})],
        ["error"],
        check=error_code("invalid_prompt", "prompt.id"),
    ),
    Case(
        "prompt_is_rendered_into_instructions",
        [update(prompt={"id": "pmpt_1", "variables": {"name": "Ann"}})],
        ["session.updated"],
        check=both(
            configured(lambda c: c.instructions == "Greet Ann."),
            lambda s: s.events[0]["session"]["instructions"] == "Greet Ann.",
        ),
        kw={"prompts": lambda pid, version, variables: f"Greet {variables['name']}."},
    ),
    Case(
        "tools_reach_the_response",
        [
            update(
                tools=[{"type": "function", "name": "f", "parameters": {}}], tool_choice="required"
            ),
            CREATE,
        ],
        ["session.updated", "response.created"],
        phase=Phase.GENERATING,
        check=lambda s: (
            s.last(StartResponse).options.tools[0].name == "f"
            and s.last(StartResponse).options.tool_choice == "required"
        ),
    ),
    # --- items --------------------------------------------------------------------------------
    Case(
        "first_item_has_no_previous",
        [user_text("a"), user_text("b")],
        ["conversation.item.added", "conversation.item.done"] * 2,
        check=lambda s: (
            s.events[0]["previous_item_id"] is None
            and s.events[2]["previous_item_id"] == s.events[0]["item"]["id"]
        ),
    ),
    Case(
        "item_at_root",
        [user_text("a"), {**user_text("b", id="item_b"), "previous_item_id": "root"}],
        ["conversation.item.added", "conversation.item.done"] * 2,
        check=lambda s: (
            s.events[2]["previous_item_id"] is None and s.history.items[0].id == "item_b"
        ),
    ),
    Case(
        "item_after_an_unknown_item",
        [{**user_text(), "previous_item_id": "item_nope"}],
        ["error"],
        check=error_code("item_not_found", "item_id"),
    ),
    Case(
        "duplicate_item_id",
        [user_text(id="item_1"), user_text(id="item_1")],
        ["conversation.item.added", "conversation.item.done", "error"],
        check=error_code("invalid_value", "item.id"),
    ),
    Case(
        "retrieve_unknown",
        [{"type": "conversation.item.retrieve", "item_id": "item_nope"}],
        ["error"],
        check=error_code("item_not_found", "item_id"),
    ),
    Case(
        "retrieve_a_committed_turn_before_its_transcript",
        [_committed, {"type": "conversation.item.retrieve", "item_id": "item_u1"}],
        [*COMMITTED, "conversation.item.retrieved"],
    ),
    Case(
        "delete_then_retrieve",
        [
            user_text(id="item_1"),
            {"type": "conversation.item.delete", "item_id": "item_1"},
            {"type": "conversation.item.retrieve", "item_id": "item_1"},
        ],
        ["conversation.item.added", "conversation.item.done", "conversation.item.deleted", "error"],
        check=lambda s: s.history.get("item_1") is None,
    ),
    Case(
        "an_item_never_shown_cannot_be_retrieved",
        [
            CREATE,
            _started,
            lambda s: s.client({"type": "conversation.item.retrieve", "item_id": s.item}),
        ],
        ["response.created", "error"],
        phase=Phase.GENERATING,
    ),
    Case(
        "truncate_a_user_item",
        [
            user_text(id="item_1"),
            {
                "type": "conversation.item.truncate",
                "item_id": "item_1",
                "content_index": 0,
                "audio_end_ms": 10,
            },
        ],
        ["conversation.item.added", "conversation.item.done", "error"],
        check=error_code("invalid_value", "item_id"),
    ),
    Case(
        "truncate_beyond_the_audio",
        [
            CREATE,
            _started,
            _audio,
            _done("completed"),
            lambda s: s.client(
                {
                    "type": "conversation.item.truncate",
                    "item_id": s.item,
                    "content_index": 0,
                    "audio_end_ms": 5000,
                }
            ),
        ],
        None,
        check=error_code("invalid_value", "audio_end_ms"),
    ),
    Case(
        "truncate_what_was_heard",
        [
            CREATE,
            _started,
            _text("Some words"),
            _audio,
            _done("completed"),
            lambda s: s.client(
                {
                    "type": "conversation.item.truncate",
                    "item_id": s.item,
                    "content_index": 0,
                    "audio_end_ms": 20,
                }
            ),
            lambda s: s.take(s.session.command_done(s.last(Truncate), "Some")),
        ],
        None,
        check=lambda s: (
            s.types()[-1] == "conversation.item.truncated"
            and s.history.get(s.item or "").view["content"][0]["transcript"] == "Some"
        ),  # type: ignore[union-attr]
    ),
    Case(
        "image_without_vision",
        [
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}],
                },
            }
        ],
        ["error"],
        check=error_code("image_input_not_supported", "item.content[0]"),
    ),
    Case(
        "audio_item_is_recognised_and_a_response_waits_for_it",
        [
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": pcm_b64()}],
                },
            },
            CREATE,
            lambda s: s.take(s.session.command_done(s.last(TranscribeItem), "hello")),
        ],
        [
            "conversation.item.added",
            "conversation.item.done",
            "response.created",
            "conversation.item.input_audio_transcription.completed",
        ],
        phase=Phase.GENERATING,
        check=commands_are(TranscribeItem, StartResponse),
    ),
    Case(
        "audio_item_recognition_fails",
        [
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_audio", "audio": pcm_b64()}],
                },
            },
            lambda s: s.take(
                s.session.command_failed(s.last(TranscribeItem), EngineError("asr down"))
            ),
        ],
        [
            "conversation.item.added",
            "conversation.item.done",
            "conversation.item.input_audio_transcription.failed",
        ],
    ),
    # --- input audio and malformed input ------------------------------------------------------
    Case(
        "append_pushes_audio",
        [{"type": "input_audio_buffer.append", "audio": pcm_b64()}],
        [],
        check=lambda s: isinstance(s.commands[0], PushAudio) and len(s.commands[0].frame) == 2400,
    ),
    Case(
        "append_bad_base64",
        [{"type": "input_audio_buffer.append", "audio": "***"}],
        ["error"],
        check=lambda s: (
            s.errors()[0]["param"] == "audio" and s.errors()[0]["type"] == "invalid_request_error"
        ),
    ),
    Case(
        "append_half_a_sample",
        [
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(b"\x00\x01\x02").decode(),
            }
        ],
        ["error"],
        check=lambda s: s.errors()[0]["param"] == "audio",
    ),
    Case(
        "commit_and_clear",
        [
            {"type": "input_audio_buffer.commit"},
            {"type": "input_audio_buffer.clear"},
            lambda s: s.take(s.session.command_done(s.last(ClearInput))),
        ],
        ["input_audio_buffer.cleared"],
        check=lambda s: [type(c) for c in s.commands] == [CommitInput, ClearInput],
    ),
    Case(
        "malformed_json",
        ['{"type": "response.create"'],
        ["error"],
        check=error_code("invalid_json"),
    ),
    Case(
        "unknown_event",
        [{"type": "response.explode"}],
        ["error"],
        check=error_code("invalid_value", "type"),
    ),
    Case("binary_garbage", [b"\xff\xfe\x00"], ["error"], check=error_code("invalid_json")),
    Case("not_an_object", ["[1, 2]"], ["error"], check=error_code("invalid_event")),
    Case(
        "wrong_type_in_a_nested_field",
        [
            update(
                audio={
                    "input": {
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": "long"}
                    }
                }
            )
        ],
        ["error"],
        check=error_code("invalid_type", "session.audio.input.turn_detection.silence_duration_ms"),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_session_table(case: Case) -> None:
    s = Script.open(**case.kw)
    for step in case.steps:
        if callable(step) and not isinstance(step, str | bytes | dict):
            step(s)
        else:
            s.client(step)
    if case.expect is not None:
        assert s.types() == case.expect
    if case.check is not None:
        result = case.check(s)
        assert result is None or result is True
    check_invariants(s, case)


def check_invariants(s: Script, case: Case) -> None:
    adapter = ga()
    for e in s.events:
        adapter.validate_python(e)
    created = [e["response"]["id"] for e in s.events if e["type"] == "response.created"]
    done = [e["response"]["id"] for e in s.events if e["type"] == "response.done"]
    assert len(done) == len(set(done)), "a response.done was sent twice"
    assert set(done) <= set(created)
    open_ = [r for r in created if r not in done]
    assert len(open_) <= 1
    assert (s.session.phase is Phase.IDLE) == (not open_)
    expected_phase = case.phase if case.expect is None or open_ else Phase.IDLE
    assert s.session.phase is expected_phase
    shown: set[str] = set()
    for e in s.events:
        previous = e.get("previous_item_id")
        if previous is not None:
            assert previous in shown, f"{e['type']} names {previous}, never shown"
        item = e.get("item")
        if isinstance(item, dict) and e["type"] in (
            "conversation.item.added",
            "conversation.item.created",
        ):
            shown.add(item["id"])
    # Never wedged: once the open response (if any) ends, a new one can be created.
    if s.session.phase is not Phase.IDLE or s.session.kind == "transcription":
        return
    s.events.clear()
    s.client(TEXT_ONLY)
    assert s.types()[0] == "response.created"


# --- the transition table --------------------------------------------------------------------


def test_session_transition_table_is_closed() -> None:
    # Every non-idle phase can reach IDLE; every transition out of a non-idle phase to IDLE
    # is one that emits response.done in the session.
    for phase in Phase:
        if phase is Phase.IDLE:
            continue
        seen, frontier = {phase}, [phase]
        while frontier:
            here = frontier.pop()
            for (src, _), dst in TRANSITIONS.items():
                if src is here and dst not in seen:
                    seen.add(dst)
                    frontier.append(dst)
        assert Phase.IDLE in seen
    assert next_phase(Phase.GENERATING, Trigger.CANCEL) is Phase.CANCELLING
    with pytest.raises(IllegalTransition):
        next_phase(Phase.IDLE, Trigger.CANCEL)
    with pytest.raises(IllegalTransition):
        next_phase(Phase.CANCELLING, Trigger.CREATE)


def test_session_enough_cases() -> None:
    assert len(CASES) >= 60


def test_session_beta_names_for_the_same_events() -> None:
    from openai.types.beta.realtime import RealtimeServerEvent

    beta = TypeAdapter(RealtimeServerEvent)
    s = Script.open(beta=True)
    for step in [user_text(), CREATE, _started, _text("Hi."), _audio, _done("completed")]:
        step(s) if callable(step) else s.client(step)
    encoded = [s.session.encode(e) for e in s.events]
    for e in encoded:
        if e is not None:
            beta.validate_python(e)
    assert "response.audio.delta" in [e["type"] for e in encoded if e is not None]
