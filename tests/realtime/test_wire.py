"""Realtime wire layer: every client event parses, bad input becomes the OpenAI error shape."""

from __future__ import annotations

import json
from typing import Any

import openai.types.realtime as sdk
import pytest
from pydantic import TypeAdapter

from parley.audio.formats import G711_ALAW, G711_ULAW, PCM16_24K
from parley.errors import BadAudioError, EngineError, ParleyError
from parley.realtime.wire import (
    MAX_EVENT_BYTES,
    AssistantMessageItem,
    ConversationItemCreateEvent,
    ConversationItemDeleteEvent,
    ConversationItemRetrieveEvent,
    ConversationItemTruncateEvent,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputAudioBufferAppendEvent,
    InputAudioBufferClearEvent,
    InputAudioBufferCommitEvent,
    ItemReference,
    OutputAudioBufferClearEvent,
    PcmaFormat,
    PcmFormat,
    PcmuFormat,
    ProtocolError,
    ResponseCancelEvent,
    ResponseCreateEvent,
    SemanticVad,
    ServerVad,
    SessionConfig,
    SessionUpdateEvent,
    SystemMessageItem,
    UserMessageItem,
    audio_format,
    error_event,
    new_event_id,
    parse_client_event,
    wire_format,
)

SDK_CLIENT_EVENT: TypeAdapter[Any] = TypeAdapter(sdk.RealtimeClientEvent)

AUDIO_B64 = "AAABAAIAAwA="  # four pcm16 samples

FUNCTION_TOOL = sdk.RealtimeFunctionToolParam(
    type="function",
    name="get_weather",
    description="Current weather for a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)

FULL_SESSION = sdk.SessionUpdateEventParam(
    type="session.update",
    event_id="evt_full",
    session=sdk.RealtimeSessionCreateRequestParam(
        type="realtime",
        model="gpt-realtime",
        output_modalities=["audio"],
        instructions="Be brief.",
        audio=sdk.RealtimeAudioConfigParam(
            input=sdk.RealtimeAudioConfigInputParam(
                format={"type": "audio/pcm", "rate": 24000},
                transcription=sdk.AudioTranscriptionParam(
                    model="gpt-4o-transcribe", language="en", prompt="names: Ada"
                ),
                noise_reduction={"type": "near_field"},
                turn_detection={
                    "type": "server_vad",
                    "threshold": 0.6,
                    "prefix_padding_ms": 200,
                    "silence_duration_ms": 400,
                    "create_response": True,
                    "interrupt_response": False,
                    "idle_timeout_ms": 6000,
                },
            ),
            output=sdk.RealtimeAudioConfigOutputParam(
                format={"type": "audio/pcmu"}, voice="marin", speed=1.1
            ),
        ),
        tools=[FUNCTION_TOOL],
        tool_choice={"type": "function", "name": "get_weather"},
        max_output_tokens="inf",
        truncation={"type": "retention_ratio", "retention_ratio": 0.8},
        prompt={
            "id": "pmpt_123",
            "version": "2",
            "variables": {"city": "Paris", "note": {"type": "input_text", "text": "hi"}},
        },
        include=["item.input_audio_transcription.logprobs"],
        tracing="auto",
    ),
)

USER_MESSAGE = sdk.RealtimeConversationItemUserMessageParam(
    type="message",
    role="user",
    content=[
        {"type": "input_text", "text": "What is this?"},
        {"type": "input_audio", "audio": AUDIO_B64, "transcript": "what is this"},
        {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
    ],
)

# (SDK-shaped client event, parley class it must parse to)
CLIENT_EVENTS: list[tuple[str, dict[str, Any], type]] = [
    ("session-full", dict(FULL_SESSION), SessionUpdateEvent),
    (
        "session-semantic-vad",
        dict(
            sdk.SessionUpdateEventParam(
                type="session.update",
                session={
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "format": {"type": "audio/pcma"},
                            "turn_detection": {
                                "type": "semantic_vad",
                                "eagerness": "high",
                                "create_response": False,
                                "interrupt_response": True,
                            },
                        },
                        "output": {"voice": {"id": "voice_1234"}},
                    },
                    "tool_choice": "required",
                    "truncation": "disabled",
                    "max_output_tokens": 256,
                },
            )
        ),
        SessionUpdateEvent,
    ),
    (
        "session-transcription",
        dict(
            sdk.SessionUpdateEventParam(
                type="session.update",
                session=sdk.RealtimeTranscriptionSessionCreateRequestParam(
                    type="transcription",
                    audio={
                        "input": {
                            "format": {"type": "audio/pcm", "rate": 24000},
                            "transcription": {"model": "gpt-4o-mini-transcribe"},
                            "turn_detection": None,
                            # The docs' way to turn it off; the param TypedDict omits null.
                            "noise_reduction": None,  # type: ignore[typeddict-item]
                        }
                    },
                ),
            )
        ),
        SessionUpdateEvent,
    ),
    (
        "append",
        dict(
            sdk.InputAudioBufferAppendEventParam(
                type="input_audio_buffer.append", audio=AUDIO_B64, event_id="evt_1"
            )
        ),
        InputAudioBufferAppendEvent,
    ),
    (
        "commit",
        dict(sdk.InputAudioBufferCommitEventParam(type="input_audio_buffer.commit")),
        InputAudioBufferCommitEvent,
    ),
    (
        "clear",
        dict(sdk.InputAudioBufferClearEventParam(type="input_audio_buffer.clear", event_id="e")),
        InputAudioBufferClearEvent,
    ),
    (
        "item-user",
        dict(
            sdk.ConversationItemCreateEventParam(
                type="conversation.item.create", item=USER_MESSAGE, previous_item_id="item_0"
            )
        ),
        ConversationItemCreateEvent,
    ),
    (
        "item-system",
        dict(
            sdk.ConversationItemCreateEventParam(
                type="conversation.item.create",
                item=sdk.RealtimeConversationItemSystemMessageParam(
                    type="message",
                    role="system",
                    content=[{"type": "input_text", "text": "Speak French."}],
                ),
            )
        ),
        ConversationItemCreateEvent,
    ),
    (
        "item-assistant",
        dict(
            sdk.ConversationItemCreateEventParam(
                type="conversation.item.create",
                item=sdk.RealtimeConversationItemAssistantMessageParam(
                    type="message",
                    role="assistant",
                    id="item_a",
                    status="completed",
                    content=[
                        {"type": "output_text", "text": "Bonjour."},
                        {"type": "output_audio", "transcript": "Bonjour."},
                    ],
                ),
            )
        ),
        ConversationItemCreateEvent,
    ),
    (
        "item-function-call",
        dict(
            sdk.ConversationItemCreateEventParam(
                type="conversation.item.create",
                item=sdk.RealtimeConversationItemFunctionCallParam(
                    type="function_call",
                    name="get_weather",
                    arguments='{"city": "Paris"}',
                    call_id="call_1",
                ),
            )
        ),
        ConversationItemCreateEvent,
    ),
    (
        "item-function-output",
        dict(
            sdk.ConversationItemCreateEventParam(
                type="conversation.item.create",
                item=sdk.RealtimeConversationItemFunctionCallOutputParam(
                    type="function_call_output", call_id="call_1", output='{"temp_c": 21}'
                ),
            )
        ),
        ConversationItemCreateEvent,
    ),
    (
        "retrieve",
        dict(
            sdk.ConversationItemRetrieveEventParam(
                type="conversation.item.retrieve", item_id="item_1"
            )
        ),
        ConversationItemRetrieveEvent,
    ),
    (
        "truncate",
        dict(
            sdk.ConversationItemTruncateEventParam(
                type="conversation.item.truncate",
                item_id="item_1",
                content_index=0,
                audio_end_ms=1500,
            )
        ),
        ConversationItemTruncateEvent,
    ),
    (
        "delete",
        dict(sdk.ConversationItemDeleteEventParam(type="conversation.item.delete", item_id="i")),
        ConversationItemDeleteEvent,
    ),
    (
        "response-bare",
        dict(sdk.ResponseCreateEventParam(type="response.create")),
        ResponseCreateEvent,
    ),
    (
        "response-full",
        dict(
            sdk.ResponseCreateEventWithReferencesParam(
                type="response.create",
                event_id="evt_r",
                response={
                    "output_modalities": ["text"],
                    "instructions": "Summarise.",
                    "tools": [FUNCTION_TOOL],
                    "tool_choice": "none",
                    "max_output_tokens": 100,
                    "conversation": "none",
                    "input": [USER_MESSAGE],
                    "metadata": {"topic": "summary"},
                    "audio": {"output": {"voice": "cedar", "format": {"type": "audio/pcma"}}},
                    "prompt": {"id": "pmpt_1"},
                },
            )
        ),
        ResponseCreateEvent,
    ),
    (
        "cancel",
        dict(sdk.ResponseCancelEventParam(type="response.cancel", response_id="resp_1")),
        ResponseCancelEvent,
    ),
    (
        "output-clear",
        dict(sdk.OutputAudioBufferClearEventParam(type="output_audio_buffer.clear")),
        OutputAudioBufferClearEvent,
    ),
]


@pytest.mark.parametrize(
    ("example", "cls"), [c[1:] for c in CLIENT_EVENTS], ids=[c[0] for c in CLIENT_EVENTS]
)
def test_wire_parses_every_client_event_the_sdk_sends(example: dict[str, Any], cls: type) -> None:
    SDK_CLIENT_EVENT.validate_python(example)  # the example itself is what the SDK allows
    raw = json.dumps(example)
    for message in (raw, raw.encode()):
        event = parse_client_event(message)
        assert type(event) is cls
        # Nothing the client sent is lost or altered.
        assert event.model_dump(mode="json", exclude_unset=True) == example


def test_wire_item_variants_by_role_and_type() -> None:
    kinds = {
        name: type(parse_client_event(json.dumps(ex)).item)  # type: ignore[union-attr]
        for name, ex, _ in CLIENT_EVENTS
        if ex["type"] == "conversation.item.create"
    }
    assert kinds == {
        "item-user": UserMessageItem,
        "item-system": SystemMessageItem,
        "item-assistant": AssistantMessageItem,
        "item-function-call": FunctionCallItem,
        "item-function-output": FunctionCallOutputItem,
    }


def test_wire_response_input_takes_item_references() -> None:
    # The SDK types this shape only as a param (ResponseCreateEventWithReferencesParam).
    example = sdk.ResponseCreateEventWithReferencesParam(
        type="response.create",
        response={"input": [{"type": "item_reference", "id": "item_1"}, USER_MESSAGE]},
    )
    event = parse_client_event(json.dumps(example))
    assert isinstance(event, ResponseCreateEvent)
    assert event.model_dump(mode="json", exclude_unset=True) == example
    assert event.response is not None and event.response.input is not None
    ref, msg = event.response.input
    assert isinstance(ref, ItemReference) and ref.id == "item_1"
    assert isinstance(msg, UserMessageItem)


def test_wire_turn_detection_variants() -> None:
    full = parse_client_event(json.dumps(dict(FULL_SESSION)))
    assert isinstance(full, SessionUpdateEvent)
    assert full.session.audio is not None and full.session.audio.input is not None
    vad = full.session.audio.input.turn_detection
    assert isinstance(vad, ServerVad) and vad.threshold == 0.6 and vad.idle_timeout_ms == 6000
    semantic = parse_client_event(json.dumps(CLIENT_EVENTS[1][1]))
    assert isinstance(semantic, SessionUpdateEvent)
    assert semantic.session.audio is not None and semantic.session.audio.input is not None
    assert isinstance(semantic.session.audio.input.turn_detection, SemanticVad)


def _session(raw: dict[str, Any]) -> SessionConfig:
    event = parse_client_event(json.dumps({"type": "session.update", "session": raw}))
    assert isinstance(event, SessionUpdateEvent)
    return event.session


def test_wire_partial_session_update_keeps_absent_fields_unset() -> None:
    session = _session({"type": "realtime", "instructions": "Be brief."})
    assert session.model_fields_set == {"type", "instructions"}
    assert session.audio is None and session.tools is None

    session = _session({"audio": {"output": {"voice": "ash"}}})
    assert session.model_fields_set == {"audio"}
    assert session.audio is not None and session.audio.model_fields_set == {"output"}
    assert session.audio.output is not None
    assert session.audio.output.model_fields_set == {"voice"}


def test_wire_null_in_session_update_is_sent_not_absent() -> None:
    session = _session({"audio": {"input": {"turn_detection": None, "transcription": None}}})
    assert session.audio is not None and session.audio.input is not None
    assert session.audio.input.model_fields_set == {"turn_detection", "transcription"}
    assert session.audio.input.turn_detection is None


def test_wire_session_merged_applies_only_sent_fields() -> None:
    base = _session(
        {
            "type": "realtime",
            "instructions": "Be brief.",
            "audio": {
                "input": {"turn_detection": {"type": "server_vad", "threshold": 0.5}},
                "output": {"voice": "alloy", "speed": 1.0},
            },
        }
    )
    merged = base.merged(_session({"audio": {"output": {"voice": "ash"}}}))
    assert merged.instructions == "Be brief."
    assert merged.audio is not None and merged.audio.output is not None
    assert merged.audio.output.voice == "ash" and merged.audio.output.speed == 1.0
    assert merged.audio.input is not None
    assert isinstance(merged.audio.input.turn_detection, ServerVad)

    off = merged.merged(_session({"audio": {"input": {"turn_detection": None}}}))
    assert off.audio is not None and off.audio.input is not None
    assert off.audio.input.turn_detection is None
    assert off.audio.output is not None and off.audio.output.voice == "ash"
    assert base.audio is not None and base.audio.output is not None
    assert base.audio.output.voice == "alloy"  # merging never changes the original


def _update(session: object, event_id: str | None = "evt_9") -> str:
    event: dict[str, Any] = {"type": "session.update", "session": session}
    if event_id is not None:
        event["event_id"] = event_id
    return json.dumps(event)


def _item(item: Any) -> str:
    return json.dumps({"type": "conversation.item.create", "event_id": "evt_i", "item": item})


# (raw message, code, param, event_id)
BAD_EVENTS: list[tuple[str, str | bytes, str, str | None, str | None]] = [
    ("not-json", "{nope", "invalid_json", None, None),
    ("truncated-json", b'{"type": "response.create"', "invalid_json", None, None),
    ("bad-utf8", b'{"type": "\xff"}', "invalid_json", None, None),
    ("nan", '{"type": "session.update", "x": NaN}', "invalid_json", None, None),
    ("array", "[1, 2]", "invalid_event", None, None),
    ("string", '"session.update"', "invalid_event", None, None),
    ("no-type", '{"event_id": "evt_1"}', "invalid_event", "type", "evt_1"),
    ("type-not-string", '{"type": 5, "event_id": "e"}', "invalid_type", "type", "e"),
    ("unknown-type", '{"type": "ping", "event_id": "e2"}', "invalid_value", "type", "e2"),
    (
        "beta-only-type",
        '{"type": "transcription_session.update", "session": {}}',
        "invalid_value",
        "type",
        None,
    ),
    (
        "event-id-not-string",
        '{"type": "response.cancel", "event_id": 7}',
        "invalid_type",
        "event_id",
        None,
    ),
    ("no-session", '{"type": "session.update"}', "missing_required_parameter", "session", None),
    ("session-not-object", _update("x"), "invalid_type", "session", "evt_9"),
    ("session-type", _update({"type": "chat"}), "invalid_value", "session.type", "evt_9"),
    (
        "instructions-int",
        _update({"instructions": 5}),
        "invalid_type",
        "session.instructions",
        "evt_9",
    ),
    (
        "modalities-both",
        _update({"output_modalities": ["audio", "text"]}),
        "invalid_value",
        "session.output_modalities",
        "evt_9",
    ),
    (
        "modality-unknown",
        _update({"output_modalities": ["video"]}),
        "invalid_value",
        "session.output_modalities[0]",
        "evt_9",
    ),
    (
        "format-type",
        _update({"audio": {"input": {"format": {"type": "audio/wav"}}}}),
        "invalid_value",
        "session.audio.input.format.type",
        "evt_9",
    ),
    (
        "format-rate",
        _update({"audio": {"input": {"format": {"type": "audio/pcm", "rate": 16000}}}}),
        "invalid_value",
        "session.audio.input.format.rate",
        "evt_9",
    ),
    (
        "vad-type-missing",
        _update({"audio": {"input": {"turn_detection": {"threshold": 0.5}}}}),
        "missing_required_parameter",
        "session.audio.input.turn_detection.type",
        "evt_9",
    ),
    (
        "vad-threshold-range",
        _update({"audio": {"input": {"turn_detection": {"type": "server_vad", "threshold": 2}}}}),
        "invalid_value",
        "session.audio.input.turn_detection.threshold",
        "evt_9",
    ),
    (
        "vad-silence-string",
        _update(
            {
                "audio": {
                    "input": {
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": "500"}
                    }
                }
            }
        ),
        "invalid_type",
        "session.audio.input.turn_detection.silence_duration_ms",
        "evt_9",
    ),
    (
        "eagerness",
        _update(
            {"audio": {"input": {"turn_detection": {"type": "semantic_vad", "eagerness": "eager"}}}}
        ),
        "invalid_value",
        "session.audio.input.turn_detection.eagerness",
        "evt_9",
    ),
    (
        "create-response-string",
        _update(
            {
                "audio": {
                    "input": {"turn_detection": {"type": "server_vad", "create_response": "true"}}
                }
            }
        ),
        "invalid_type",
        "session.audio.input.turn_detection.create_response",
        "evt_9",
    ),
    (
        "speed-range",
        _update({"audio": {"output": {"speed": 3.0}}}),
        "invalid_value",
        "session.audio.output.speed",
        "evt_9",
    ),
    (
        "voice-int",
        _update({"audio": {"output": {"voice": 3}}}),
        "invalid_type",
        "session.audio.output.voice",
        "evt_9",
    ),
    (
        "tool-name-missing",
        _update({"tools": [{"type": "function", "description": "x"}]}),
        "missing_required_parameter",
        "session.tools[0].name",
        "evt_9",
    ),
    (
        "tool-mcp",
        _update({"tools": [{"type": "mcp", "server_label": "x", "name": "y"}]}),
        "invalid_value",
        "session.tools[0].type",
        "evt_9",
    ),
    (
        "tool-choice",
        _update({"tool_choice": "sometimes"}),
        "invalid_value",
        "session.tool_choice",
        "evt_9",
    ),
    (
        "tool-choice-no-name",
        _update({"tool_choice": {"type": "function"}}),
        "missing_required_parameter",
        "session.tool_choice.name",
        "evt_9",
    ),
    (
        "max-tokens-string",
        _update({"max_output_tokens": "lots"}),
        "invalid_value",
        "session.max_output_tokens",
        "evt_9",
    ),
    (
        "max-tokens-zero",
        _update({"max_output_tokens": 0}),
        "invalid_value",
        "session.max_output_tokens",
        "evt_9",
    ),
    (
        "max-tokens-float",
        _update({"max_output_tokens": 1.5}),
        "invalid_value",
        "session.max_output_tokens",
        "evt_9",
    ),
    (
        "truncation",
        _update({"truncation": "sometimes"}),
        "invalid_value",
        "session.truncation",
        "evt_9",
    ),
    (
        "retention-ratio-missing",
        _update({"truncation": {"type": "retention_ratio"}}),
        "missing_required_parameter",
        "session.truncation.retention_ratio",
        "evt_9",
    ),
    (
        "prompt-id-missing",
        _update({"prompt": {"version": "1"}}),
        "missing_required_parameter",
        "session.prompt.id",
        "evt_9",
    ),
    (
        "append-no-audio",
        '{"type": "input_audio_buffer.append"}',
        "missing_required_parameter",
        "audio",
        None,
    ),
    (
        "append-audio-list",
        '{"type": "input_audio_buffer.append", "audio": [1]}',
        "invalid_type",
        "audio",
        None,
    ),
    (
        "item-missing",
        '{"type": "conversation.item.create"}',
        "missing_required_parameter",
        "item",
        None,
    ),
    ("item-string", _item("hello"), "invalid_type", "item", "evt_i"),
    (
        "item-type-missing",
        _item({"role": "user", "content": []}),
        "missing_required_parameter",
        "item.type",
        "evt_i",
    ),
    ("item-type-unknown", _item({"type": "note"}), "invalid_value", "item.type", "evt_i"),
    (
        "item-role",
        _item({"type": "message", "role": "developer", "content": []}),
        "invalid_value",
        "item.role",
        "evt_i",
    ),
    (
        "item-content-missing",
        _item({"type": "message", "role": "user"}),
        "missing_required_parameter",
        "item.content",
        "evt_i",
    ),
    (
        "user-output-part",
        _item(
            {"type": "message", "role": "user", "content": [{"type": "output_text", "text": "x"}]}
        ),
        "invalid_value",
        "item.content[0].type",
        "evt_i",
    ),
    (
        "assistant-input-part",
        _item(
            {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "input_text", "text": "x"}],
            }
        ),
        "invalid_value",
        "item.content[0].type",
        "evt_i",
    ),
    (
        "text-not-string",
        _item(
            {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "ok"},
                    {"type": "input_text", "text": 1},
                ],
            }
        ),
        "invalid_type",
        "item.content[1].text",
        "evt_i",
    ),
    (
        "call-args-missing",
        _item({"type": "function_call", "name": "f"}),
        "missing_required_parameter",
        "item.arguments",
        "evt_i",
    ),
    (
        "output-call-id-missing",
        _item({"type": "function_call_output", "output": "x"}),
        "missing_required_parameter",
        "item.call_id",
        "evt_i",
    ),
    (
        "truncate-ms-string",
        '{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0,'
        ' "audio_end_ms": "5"}',
        "invalid_type",
        "audio_end_ms",
        None,
    ),
    (
        "truncate-ms-negative",
        '{"type": "conversation.item.truncate", "item_id": "i", "content_index": 0,'
        ' "audio_end_ms": -1}',
        "invalid_value",
        "audio_end_ms",
        None,
    ),
    (
        "retrieve-no-id",
        '{"type": "conversation.item.retrieve"}',
        "missing_required_parameter",
        "item_id",
        None,
    ),
    (
        "response-not-object",
        '{"type": "response.create", "response": []}',
        "invalid_type",
        "response",
        None,
    ),
    (
        "response-conversation",
        '{"type": "response.create", "response": {"conversation": "x"}}',
        "invalid_value",
        "response.conversation",
        None,
    ),
    (
        "response-input-ref",
        '{"type": "response.create", "response": {"input": [{"type": "item_reference"}]}}',
        "missing_required_parameter",
        "response.input[0].id",
        None,
    ),
    (
        "response-metadata",
        '{"type": "response.create", "response": {"metadata": {"a": 1}}}',
        "invalid_type",
        "response.metadata.a",
        None,
    ),
    (
        "cancel-id-int",
        '{"type": "response.cancel", "response_id": 1}',
        "invalid_type",
        "response_id",
        None,
    ),
]


@pytest.mark.parametrize(
    ("raw", "code", "param", "event_id"),
    [b[1:] for b in BAD_EVENTS],
    ids=[b[0] for b in BAD_EVENTS],
)
def test_wire_bad_event_raises_protocol_error(
    raw: str | bytes, code: str, param: str | None, event_id: str | None
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(raw)
    err = info.value
    assert (err.code, err.param, err.event_id) == (code, param, event_id)
    assert err.message and "\n" not in err.message
    assert "http" not in err.message and "pydantic" not in err.message.lower()


def test_wire_protocol_error_messages_read_like_openai() -> None:
    def message(raw: str) -> str:
        with pytest.raises(ProtocolError) as info:
            parse_client_event(raw)
        return info.value.message

    assert message('{"event_id": "x"}') == "The 'type' field is missing."
    assert message('{"type": "ping"}').startswith("Invalid value: 'ping'. Supported values are: ")
    assert message('{"type": "session.update"}') == "Missing required parameter: 'session'."
    assert message(_update({"instructions": 5})) == (
        "Invalid type for 'session.instructions': expected a string, but got an integer instead."
    )


def test_wire_error_echo_of_a_long_value_is_short() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(_update({"tool_choice": "x" * 100_000}))
    assert len(info.value.message) < 200


def test_wire_protocol_error_is_a_client_error() -> None:
    err = ProtocolError("bad", code="invalid_value", param="type", event_id="e")
    assert isinstance(err, ParleyError) and err.code == "invalid_value"


def _append_of_size(size: int) -> str:
    head = '{"type": "input_audio_buffer.append", "audio": "'
    tail = '"}'
    return head + "A" * (size - len(head) - len(tail)) + tail


def test_wire_event_at_size_limit_parses() -> None:
    raw = _append_of_size(MAX_EVENT_BYTES)
    assert len(raw.encode()) == MAX_EVENT_BYTES
    assert isinstance(parse_client_event(raw), InputAudioBufferAppendEvent)


@pytest.mark.parametrize("as_bytes", [False, True])
def test_wire_event_over_size_limit_is_rejected_before_parsing(as_bytes: bool) -> None:
    raw = _append_of_size(MAX_EVENT_BYTES + 1)
    with pytest.raises(ProtocolError) as info:
        parse_client_event(raw.encode() if as_bytes else raw)
    assert info.value.code == "message_too_large"
    assert info.value.param is None and info.value.event_id is None


def test_wire_size_limit_counts_utf8_bytes_not_characters() -> None:
    text = "é" * (MAX_EVENT_BYTES // 2)  # fewer characters than the limit, more bytes
    raw = json.dumps(
        {"type": "session.update", "session": {"instructions": text}}, ensure_ascii=False
    )
    assert len(raw) < MAX_EVENT_BYTES < len(raw.encode())
    with pytest.raises(ProtocolError) as info:
        parse_client_event(raw)
    assert info.value.code == "message_too_large"


ERRORS: list[tuple[ParleyError, str | None, str, str, str | None]] = [
    # (error, event_id argument, error.type, error.code, expected error.event_id)
    (
        ProtocolError("Bad.", code="invalid_value", param="session.type", event_id="evt_c"),
        None,
        "invalid_request_error",
        "invalid_value",
        "evt_c",
    ),
    (
        ProtocolError("Bad.", code="invalid_value", event_id="evt_c"),
        "evt_override",
        "invalid_request_error",
        "invalid_value",
        "evt_override",
    ),
    (
        BadAudioError("odd bytes", param="audio"),
        "evt_a",
        "invalid_request_error",
        "invalid_audio",
        "evt_a",
    ),
    (EngineError("tts crashed"), None, "server_error", "engine_error", None),
    (ParleyError("oops"), None, "server_error", "server_error", None),
]


@pytest.mark.parametrize(("exc", "event_id", "etype", "code", "echo"), ERRORS)
def test_wire_error_event_validates_against_the_sdk(
    exc: ParleyError, event_id: str | None, etype: str, code: str, echo: str | None
) -> None:
    event = error_event(exc, event_id)
    model = sdk.RealtimeErrorEvent.model_validate(event)
    dumped = model.model_dump(exclude_none=True)
    assert dumped == {
        "type": "error",
        "event_id": event["event_id"],
        "error": {k: v for k, v in event["error"].items() if v is not None},
    }
    assert event["event_id"].startswith("event_")
    assert event["error"]["type"] == etype
    assert event["error"]["code"] == code
    assert event["error"]["event_id"] == echo
    assert event["error"]["message"] == exc.message
    assert event["error"]["param"] == exc.param
    assert type(TypeAdapter(sdk.RealtimeServerEvent).validate_python(event)) is (
        sdk.RealtimeErrorEvent
    )


def test_wire_error_event_from_a_parse_failure() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_event('{"type": "ping", "event_id": "evt_p"}')
    event = error_event(info.value)
    assert event["error"]["event_id"] == "evt_p" and event["error"]["param"] == "type"
    sdk.RealtimeErrorEvent.model_validate(event)


def test_wire_new_event_ids_are_prefixed_and_unique() -> None:
    ids = {new_event_id() for _ in range(1000)}
    assert len(ids) == 1000
    for eid in ids:
        assert eid.startswith("event_") and eid[6:].isalnum() and len(eid) == 28


@pytest.mark.parametrize(
    ("obj", "fmt"),
    [
        (PcmFormat(type="audio/pcm"), PCM16_24K),
        (PcmuFormat(type="audio/pcmu"), G711_ULAW),
        (PcmaFormat(type="audio/pcma"), G711_ALAW),
    ],
)
def test_wire_audio_format_objects_map_to_wire_formats(obj: Any, fmt: Any) -> None:
    assert wire_format(obj) == fmt
    assert audio_format(fmt) == obj
