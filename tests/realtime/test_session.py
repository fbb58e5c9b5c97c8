"""The sans-I/O Realtime session: events in, events and commands out; no sockets, no engines."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from pydantic import TypeAdapter

from parley.audio.frames import Frame
from parley.config import load_settings
from parley.engines.base import Message, Usage
from parley.errors import BadAudioError, EngineError
from parley.pipeline.events import (
    InputCommitted,
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
from parley.realtime.session import (
    CancelResponse,
    CommitInput,
    Configure,
    CreateResponse,
    PushAudio,
    RealtimeSession,
    Truncate,
)


def ga() -> TypeAdapter[Any]:
    from openai.types.realtime import RealtimeServerEvent

    return TypeAdapter(RealtimeServerEvent)


def beta() -> TypeAdapter[Any]:
    from openai.types.beta.realtime import RealtimeServerEvent

    return TypeAdapter(RealtimeServerEvent)


def session(**kw: Any) -> tuple[RealtimeSession, History]:
    history = History()
    return RealtimeSession(load_settings(env={}), history, **kw), history


def test_session_open_configures_pipeline_and_validates() -> None:
    s, _ = session()
    out = s.open()
    assert [e["type"] for e in out.events] == ["session.created"]
    ga().validate_python(out.events[0])
    (configure,) = out.commands
    assert isinstance(configure, Configure)
    assert (configure.input_rate, configure.output_rate) == (24000, 24000)
    assert configure.turn_detection.type == "server_vad"


@pytest.mark.parametrize(
    ("event", "command"),
    [
        ({"type": "input_audio_buffer.commit"}, CommitInput),
        ({"type": "response.create"}, CreateResponse),
        ({"type": "response.cancel"}, CancelResponse),
        ({"type": "input_audio_buffer.append", "audio": "AAAAAA=="}, PushAudio),
    ],
)
def test_session_client_events_become_commands(event: dict[str, Any], command: type) -> None:
    import json

    s, _ = session()
    out = s.receive(json.dumps(event))
    assert [type(c) for c in out.commands] == [command]
    assert out.events == []


def test_session_g711_input_is_decoded_at_8k() -> None:
    import base64
    import json

    s, _ = session()
    s.receive(
        json.dumps(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {"input": {"format": {"type": "audio/pcmu"}}},
                },
            }
        )
    )
    out = s.receive(
        json.dumps(
            {
                "type": "input_audio_buffer.append",
                "audio": base64.b64encode(bytes([0xFF] * 160)).decode(),
            }
        )
    )
    (push,) = out.commands
    assert isinstance(push, PushAudio)
    assert push.frame.sample_rate == 8000 and len(push.frame) == 160
    assert not np.any(push.frame.samples)  # 0xFF is mu-law silence


def test_session_response_events_in_order_and_valid() -> None:
    s, history = session()
    history.add(Message("user", "hi"), item_id="item_u")
    history.add(Message("assistant", ""), item_id="item_a")
    events: list[dict[str, Any]] = []
    for ev in [
        ResponseStarted("resp_1", "item_a", None),
        ResponseTextDelta("resp_1", "item_a", "Hello "),
        ResponseAudio("resp_1", "item_a", Frame(np.ones(480, np.int16), 24000)),
        ResponseTextDelta("resp_1", "item_a", "there."),
        ResponseDone(
            "resp_1",
            "item_a",
            None,
            "completed",
            None,
            "Hello there.",
            20.0,
            Usage(5, 3),
            TurnTimeline(),
        ),
    ]:
        events += s.pipeline_event(ev).events
    kinds = [e["type"] for e in events]
    assert kinds == [
        "response.created",
        "response.output_item.added",
        "conversation.item.added",
        "response.content_part.added",
        "response.output_audio_transcript.delta",
        "response.output_audio.delta",
        "response.output_audio_transcript.delta",
        "response.output_audio.done",
        "response.output_audio_transcript.done",
        "response.content_part.done",
        "response.output_item.done",
        "conversation.item.done",
        "response.done",
        "rate_limits.updated",
    ]
    adapter = ga()
    for e in events:
        adapter.validate_python(e)
    added = events[2]
    assert added["previous_item_id"] == "item_u"
    done = events[-2]["response"]
    assert done["usage"]["total_tokens"] == 8
    assert done["output"][0]["content"][0]["transcript"] == "Hello there."
    for e in events:  # beta clients get the same events under their names
        encoded = RealtimeSession(load_settings(env={}), History(), beta=True).encode(e)
        if encoded is not None:
            beta().validate_python(encoded)


def test_session_cancelled_response_and_truncate() -> None:
    import json

    s, history = session()
    history.add(Message("assistant", ""), item_id="item_a")
    s.pipeline_event(ResponseStarted("resp_1", "item_a", None))
    s.pipeline_event(ResponseAudio("resp_1", "item_a", Frame(np.ones(2400, np.int16), 24000)))
    out = s.pipeline_event(
        ResponseDone(
            "resp_1",
            "item_a",
            None,
            "cancelled",
            "turn_detected",
            "Some words",
            100.0,
            None,
            TurnTimeline(),
        )
    )
    response = next(e for e in out.events if e["type"] == "response.done")["response"]
    assert response["status_details"] == {"type": "cancelled", "reason": "turn_detected"}
    ga().validate_python(out.events[-2])
    out = s.receive(
        json.dumps(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_a",
                "content_index": 0,
                "audio_end_ms": 50,
            }
        )
    )
    (cmd,) = out.commands
    assert isinstance(cmd, Truncate) and cmd.audio_end_ms == 50
    assert s.command_done(cmd, "Some").events[0]["type"] == "conversation.item.truncated"
    out = s.receive(
        json.dumps(
            {
                "type": "conversation.item.truncate",
                "item_id": "item_a",
                "content_index": 0,
                "audio_end_ms": 5000,
            }
        )
    )
    assert out.events[0]["error"]["param"] == "audio_end_ms"
    s.pipeline_event(PlaybackInterrupted("resp_1", "item_a", 10.0, 100.0, "Some"))


def test_session_input_turn_events_and_transcription() -> None:
    s, history = session()
    events: list[dict[str, Any]] = []
    for ev in [
        SpeechStarted("t1", "item_u", 120.4),
        SpeechStopped("t1", "item_u", 1500.6),
        InputCommitted("t1", "item_u", 1380.0),
        TranscriptPartial("t1", "item_u", "go"),
        TranscriptPartial("t1", "item_u", "go for"),
        TranscriptPartial("t1", "item_u", "go four"),  # revised: no delta, the final says it
        TranscriptFinal("t1", "item_u", "go forward", ()),
    ]:
        if isinstance(ev, TranscriptFinal):
            history.add(Message("user", ev.text), item_id=ev.item_id)
        events += s.pipeline_event(ev).events
    adapter = ga()
    for e in events:
        adapter.validate_python(e)
    deltas = [e["delta"] for e in events if e["type"].endswith("transcription.delta")]
    assert deltas == ["go", " for"]
    completed = next(e for e in events if e["type"].endswith("transcription.completed"))
    assert completed["transcript"] == "go forward"
    assert completed["usage"] == {"type": "duration", "seconds": 1.38}
    assert events[0]["audio_start_ms"] == 120
    failed = s.pipeline_event(StageError("t2", "asr", EngineError("boom"))).events[0]
    assert failed["type"] == "conversation.item.input_audio_transcription.failed"
    adapter.validate_python(failed)


def test_session_tool_call_events() -> None:
    s, history = session()
    history.add(Message("assistant", ""), item_id="item_a")
    s.pipeline_event(ResponseStarted("resp_1", "item_a", None))
    out = s.pipeline_event(ResponseToolCall("resp_1", "item_f", "call_1", "f", '{"a": 1}'))
    kinds = [e["type"] for e in out.events]
    assert "response.function_call_arguments.done" in kinds
    for e in out.events:
        ga().validate_python(e)


def test_session_command_failures_become_error_events() -> None:
    s, _ = session()
    out = s.command_failed(CommitInput("ev_9"), BadAudioError("nope", param="audio"))
    assert out.events[0]["error"]["event_id"] == "ev_9"
    ga().validate_python(out.events[0])
