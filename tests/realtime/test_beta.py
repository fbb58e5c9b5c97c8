"""Beta Realtime dialect: beta client events read as GA, GA server events written as beta."""

from __future__ import annotations

import copy
import json
from typing import Any

import openai.types.beta.realtime as beta_sdk
import openai.types.realtime as sdk
import pytest
from pydantic import TypeAdapter

from parley.realtime.beta import client_event_from_beta, server_event_to_beta
from parley.realtime.wire import (
    ConversationItemCreateEvent,
    ProtocolError,
    ResponseCreateEvent,
    SessionUpdateEvent,
    parse_client_event,
)

GA_CLIENT: TypeAdapter[Any] = TypeAdapter(sdk.RealtimeClientEvent)
BETA_CLIENT: TypeAdapter[Any] = TypeAdapter(beta_sdk.RealtimeClientEvent)
GA_SERVER: TypeAdapter[Any] = TypeAdapter(sdk.RealtimeServerEvent)
BETA_SERVER: TypeAdapter[Any] = TypeAdapter(beta_sdk.RealtimeServerEvent)

TOOL = {
    "type": "function",
    "name": "get_weather",
    "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
PCM = {"type": "audio/pcm", "rate": 24000}

# (name, beta client event, the GA event it must become)
CLIENT_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "session-full",
        {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {
                "modalities": ["text", "audio"],
                "instructions": "Be brief.",
                "voice": "alloy",
                "input_audio_format": "pcm16",
                "output_audio_format": "g711_ulaw",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "input_audio_noise_reduction": {"type": "far_field"},
                "turn_detection": {
                    "type": "server_vad",
                    "threshold": 0.5,
                    "prefix_padding_ms": 300,
                    "silence_duration_ms": 200,
                    "create_response": True,
                    "interrupt_response": True,
                },
                "tools": [TOOL],
                "tool_choice": "auto",
                "temperature": 0.8,
                "max_response_output_tokens": 4096,
                "speed": 1.2,
                "tracing": "auto",
            },
        },
        {
            "type": "session.update",
            "event_id": "evt_1",
            "session": {
                "type": "realtime",
                "output_modalities": ["audio"],
                "instructions": "Be brief.",
                "audio": {
                    "input": {
                        "format": PCM,
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "noise_reduction": {"type": "far_field"},
                        "turn_detection": {
                            "type": "server_vad",
                            "threshold": 0.5,
                            "prefix_padding_ms": 300,
                            "silence_duration_ms": 200,
                            "create_response": True,
                            "interrupt_response": True,
                        },
                    },
                    "output": {"voice": "alloy", "format": {"type": "audio/pcmu"}, "speed": 1.2},
                },
                "tools": [TOOL],
                "tool_choice": "auto",
                "max_output_tokens": 4096,
                "tracing": "auto",
            },
        },
    ),
    (
        "session-text-no-vad",
        {
            "type": "session.update",
            "session": {
                "modalities": ["text"],
                "turn_detection": None,
                "input_audio_format": "g711_alaw",
                "tool_choice": "get_weather",
            },
        },
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "output_modalities": ["text"],
                "audio": {"input": {"turn_detection": None, "format": {"type": "audio/pcma"}}},
                "tool_choice": {"type": "function", "name": "get_weather"},
            },
        },
    ),
    (
        "session-semantic-vad",
        {
            "type": "session.update",
            "session": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}},
        },
        {
            "type": "session.update",
            "session": {
                "type": "realtime",
                "audio": {
                    "input": {"turn_detection": {"type": "semantic_vad", "eagerness": "low"}}
                },
            },
        },
    ),
    (
        "transcription-session",
        {
            "type": "transcription_session.update",
            "session": {
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-transcribe", "prompt": "names"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                "include": ["item.input_audio_transcription.logprobs"],
            },
        },
        {
            "type": "session.update",
            "session": {
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": PCM,
                        "transcription": {"model": "gpt-4o-transcribe", "prompt": "names"},
                        "turn_detection": {"type": "server_vad", "silence_duration_ms": 500},
                    }
                },
                "include": ["item.input_audio_transcription.logprobs"],
            },
        },
    ),
    (
        "response-create",
        {
            "type": "response.create",
            "response": {
                "modalities": ["text", "audio"],
                "instructions": "Say hi.",
                "voice": "ash",
                "output_audio_format": "pcm16",
                "max_response_output_tokens": "inf",
                "temperature": 0.6,
                "conversation": "none",
                "metadata": {"k": "v"},
                "tools": [TOOL],
                "tool_choice": "required",
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hello"}],
                    },
                ],
            },
        },
        {
            "type": "response.create",
            "response": {
                "output_modalities": ["audio"],
                "instructions": "Say hi.",
                "audio": {"output": {"voice": "ash", "format": PCM}},
                "max_output_tokens": "inf",
                "conversation": "none",
                "metadata": {"k": "v"},
                "tools": [TOOL],
                "tool_choice": "required",
                "input": [
                    {
                        "type": "message",
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hello"}],
                    },
                ],
            },
        },
    ),
    ("response-create-bare", {"type": "response.create"}, {"type": "response.create"}),
    (
        "item-assistant-text",
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "text", "text": "Hi there."}],
            },
        },
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "assistant",
                "content": [{"type": "output_text", "text": "Hi there."}],
            },
        },
    ),
    (
        "item-user-audio",
        {
            "type": "conversation.item.create",
            "previous_item_id": "item_0",
            "item": {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Listen:"},
                    {"type": "input_audio", "audio": "AAAA"},
                ],
            },
        },
        {
            "type": "conversation.item.create",
            "previous_item_id": "item_0",
            "item": {
                "type": "message",
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "Listen:"},
                    {"type": "input_audio", "audio": "AAAA"},
                ],
            },
        },
    ),
    (
        "item-function-output",
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
        },
        {
            "type": "conversation.item.create",
            "item": {"type": "function_call_output", "call_id": "call_1", "output": "{}"},
        },
    ),
    (
        "append",
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
        {"type": "input_audio_buffer.append", "audio": "AAAA"},
    ),
    (
        "truncate",
        {
            "type": "conversation.item.truncate",
            "item_id": "item_1",
            "content_index": 0,
            "audio_end_ms": 900,
        },
        {
            "type": "conversation.item.truncate",
            "item_id": "item_1",
            "content_index": 0,
            "audio_end_ms": 900,
        },
    ),
    ("cancel", {"type": "response.cancel"}, {"type": "response.cancel"}),
]


@pytest.mark.parametrize(
    ("beta", "ga"), [c[1:] for c in CLIENT_CASES], ids=[c[0] for c in CLIENT_CASES]
)
def test_beta_client_event_maps_to_ga_and_parses(beta: dict[str, Any], ga: dict[str, Any]) -> None:
    BETA_CLIENT.validate_python(beta)  # the example is what a beta SDK client sends
    original = copy.deepcopy(beta)
    assert client_event_from_beta(beta) == ga
    assert beta == original  # the argument is never mutated
    GA_CLIENT.validate_python(ga)  # and the mapping is a GA event the SDK accepts
    event = parse_client_event(json.dumps(beta), beta=True)
    assert event.model_dump(mode="json", exclude_unset=True) == ga


def test_beta_parsed_session_update_reads_as_ga() -> None:
    event = parse_client_event(json.dumps(CLIENT_CASES[0][1]), beta=True)
    assert isinstance(event, SessionUpdateEvent)
    audio = event.session.audio
    assert audio is not None and audio.input is not None and audio.output is not None
    assert audio.input.format is not None and audio.input.format.type == "audio/pcm"
    assert audio.output.voice == "alloy"
    assert event.session.max_output_tokens == 4096


def test_beta_parsed_response_and_item() -> None:
    response = parse_client_event(json.dumps(CLIENT_CASES[4][1]), beta=True)
    assert isinstance(response, ResponseCreateEvent) and response.response is not None
    assert response.response.output_modalities == ["audio"]
    item = parse_client_event(json.dumps(CLIENT_CASES[6][1]), beta=True)
    assert isinstance(item, ConversationItemCreateEvent)
    assert item.item.content[0].type == "output_text"  # type: ignore[union-attr]


def test_beta_response_input_keeps_item_references() -> None:
    # The GA SDK types item references only as a param, so this one is checked apart.
    beta = {
        "type": "response.create",
        "response": {"input": [{"type": "item_reference", "id": "item_1"}]},
    }
    BETA_CLIENT.validate_python(beta)
    event = parse_client_event(json.dumps(beta), beta=True)
    assert event.model_dump(mode="json", exclude_unset=True) == beta


@pytest.mark.parametrize(
    ("raw", "code", "param"),
    [
        ({"type": "session.update", "session": "x"}, "invalid_type", "session"),
        (
            {"type": "session.update", "session": {"input_audio_format": "wav"}},
            "invalid_value",
            "session.audio.input.format.type",
        ),
        (
            {"type": "session.update", "session": {"modalities": "audio"}},
            "invalid_type",
            "session.output_modalities",
        ),
        ({"type": "response.create", "response": 5}, "invalid_type", "response"),
        ({"type": "conversation.item.create", "item": []}, "invalid_type", "item"),
        ({"type": "ping", "event_id": "e"}, "invalid_value", "type"),
    ],
)
def test_beta_malformed_shapes_pass_through_to_the_parser(
    raw: dict[str, Any], code: str, param: str
) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_client_event(json.dumps(raw), beta=True)
    assert (info.value.code, info.value.param) == (code, param)


# --------------------------------------------------------------------------- server events

GA_SESSION = {
    "type": "realtime",
    "object": "realtime.session",
    "id": "sess_1",
    "model": "gpt-realtime",
    "expires_at": 1_760_000_000,
    "output_modalities": ["audio"],
    "instructions": "Be brief.",
    "tools": [TOOL],
    "tool_choice": "auto",
    "max_output_tokens": "inf",
    "tracing": None,
    "truncation": "auto",
    "prompt": None,
    "include": None,
    "audio": {
        "input": {
            "format": PCM,
            "transcription": {"model": "whisper-1", "language": None, "prompt": None},
            "noise_reduction": None,
            "turn_detection": {
                "type": "server_vad",
                "threshold": 0.5,
                "prefix_padding_ms": 300,
                "silence_duration_ms": 500,
                "idle_timeout_ms": None,
                "create_response": True,
                "interrupt_response": True,
            },
        },
        "output": {"format": {"type": "audio/pcmu"}, "voice": "marin", "speed": 1.0},
    },
}

ASSISTANT_ITEM = {
    "id": "item_2",
    "object": "realtime.item",
    "type": "message",
    "status": "completed",
    "role": "assistant",
    "content": [{"type": "output_audio", "transcript": "Hello there."}],
}

RESPONSE = {
    "object": "realtime.response",
    "id": "resp_1",
    "status": "completed",
    "status_details": None,
    "output": [ASSISTANT_ITEM],
    "conversation_id": "conv_1",
    "output_modalities": ["audio"],
    "max_output_tokens": "inf",
    "audio": {"output": {"format": PCM, "voice": "marin"}},
    "usage": {
        "total_tokens": 253,
        "input_tokens": 180,
        "output_tokens": 73,
        "input_token_details": {
            "text_tokens": 120,
            "audio_tokens": 60,
            "image_tokens": 0,
            "cached_tokens": 0,
            "cached_tokens_details": {"text_tokens": 0, "audio_tokens": 0, "image_tokens": 0},
        },
        "output_token_details": {"text_tokens": 15, "audio_tokens": 58},
    },
    "metadata": None,
}

IDS = {"response_id": "resp_1", "item_id": "item_2", "output_index": 0, "content_index": 0}

# (GA server event, the beta type it becomes)
SERVER_CASES: list[tuple[dict[str, Any], str]] = [
    ({"type": "session.created", "event_id": "event_1", "session": GA_SESSION}, "session.created"),
    ({"type": "session.updated", "event_id": "event_2", "session": GA_SESSION}, "session.updated"),
    (
        {
            "type": "conversation.item.added",
            "event_id": "event_3",
            "previous_item_id": "item_1",
            "item": {**ASSISTANT_ITEM, "status": "in_progress", "content": []},
        },
        "conversation.item.created",
    ),
    (
        {
            "type": "conversation.item.added",
            "event_id": "event_4",
            "previous_item_id": None,
            "item": {
                "id": "item_1",
                "object": "realtime.item",
                "type": "message",
                "status": "completed",
                "role": "user",
                "content": [
                    {"type": "input_audio", "transcript": None},
                    {"type": "input_image", "image_url": "data:image/png;base64,AA=="},
                ],
            },
        },
        "conversation.item.created",
    ),
    (
        {
            "type": "response.created",
            "event_id": "event_5",
            "response": {**RESPONSE, "status": "in_progress", "output": [], "usage": None},
        },
        "response.created",
    ),
    (
        {
            "type": "response.output_item.added",
            "event_id": "event_6",
            "response_id": "resp_1",
            "output_index": 0,
            "item": {**ASSISTANT_ITEM, "content": []},
        },
        "response.output_item.added",
    ),
    (
        {
            "type": "response.content_part.added",
            "event_id": "event_7",
            **IDS,
            "part": {"type": "audio", "transcript": ""},
        },
        "response.content_part.added",
    ),
    (
        {"type": "response.output_audio.delta", "event_id": "event_8", **IDS, "delta": "AAAA"},
        "response.audio.delta",
    ),
    (
        {
            "type": "response.output_audio_transcript.delta",
            "event_id": "event_9",
            **IDS,
            "delta": "Hello",
        },
        "response.audio_transcript.delta",
    ),
    (
        {"type": "response.output_audio.done", "event_id": "event_10", **IDS},
        "response.audio.done",
    ),
    (
        {
            "type": "response.output_audio_transcript.done",
            "event_id": "event_11",
            **IDS,
            "transcript": "Hello there.",
        },
        "response.audio_transcript.done",
    ),
    (
        {"type": "response.output_text.delta", "event_id": "event_12", **IDS, "delta": "Hi"},
        "response.text.delta",
    ),
    (
        {"type": "response.output_text.done", "event_id": "event_13", **IDS, "text": "Hi."},
        "response.text.done",
    ),
    (
        {
            "type": "response.content_part.done",
            "event_id": "event_14",
            **IDS,
            "part": {"type": "audio", "transcript": "Hello there."},
        },
        "response.content_part.done",
    ),
    (
        {
            "type": "response.output_item.done",
            "event_id": "event_15",
            "response_id": "resp_1",
            "output_index": 0,
            "item": ASSISTANT_ITEM,
        },
        "response.output_item.done",
    ),
    ({"type": "response.done", "event_id": "event_16", "response": RESPONSE}, "response.done"),
    (
        {
            "type": "response.done",
            "event_id": "event_17",
            "response": {
                **RESPONSE,
                "status": "cancelled",
                "status_details": {"type": "cancelled", "reason": "turn_detected"},
                "output_modalities": ["text"],
            },
        },
        "response.done",
    ),
    (
        {
            "type": "input_audio_buffer.speech_started",
            "event_id": "event_18",
            "audio_start_ms": 1000,
            "item_id": "item_1",
        },
        "input_audio_buffer.speech_started",
    ),
    (
        {
            "type": "input_audio_buffer.committed",
            "event_id": "event_19",
            "item_id": "item_1",
            "previous_item_id": None,
        },
        "input_audio_buffer.committed",
    ),
    (
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "event_id": "event_20",
            "item_id": "item_1",
            "content_index": 0,
            "transcript": "Hello.",
            "usage": {"type": "duration", "seconds": 1.2},
        },
        "conversation.item.input_audio_transcription.completed",
    ),
    (
        {
            "type": "response.function_call_arguments.done",
            "event_id": "event_21",
            "response_id": "resp_1",
            "item_id": "item_3",
            "output_index": 1,
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": "{}",
        },
        "response.function_call_arguments.done",
    ),
    (
        {"type": "output_audio_buffer.cleared", "event_id": "event_22", "response_id": "resp_1"},
        "output_audio_buffer.cleared",
    ),
    (
        {
            "type": "error",
            "event_id": "event_23",
            "error": {
                "type": "invalid_request_error",
                "code": "invalid_value",
                "message": "Bad.",
                "param": "type",
                "event_id": "evt_c",
            },
        },
        "error",
    ),
]


@pytest.mark.parametrize(
    ("ga", "beta_type"),
    SERVER_CASES,
    ids=[f"{i}-{c[0]['type']}" for i, c in enumerate(SERVER_CASES)],
)
def test_beta_server_event_validates_in_both_dialects(ga: dict[str, Any], beta_type: str) -> None:
    original = copy.deepcopy(ga)
    assert GA_SERVER.validate_python(ga).type == ga["type"]
    beta = server_event_to_beta(ga)
    assert ga == original  # never mutated
    assert beta is not None and beta["type"] == beta_type
    assert BETA_SERVER.validate_python(beta).type == beta_type
    assert beta["event_id"] == ga["event_id"]


def test_beta_session_is_flat() -> None:
    beta = server_event_to_beta(SERVER_CASES[0][0])
    assert beta is not None
    assert beta["session"] == {
        "id": "sess_1",
        "object": "realtime.session",
        "expires_at": 1_760_000_000,
        "model": "gpt-realtime",
        "instructions": "Be brief.",
        "tracing": None,
        "modalities": ["text", "audio"],
        "max_response_output_tokens": "inf",
        "tools": [TOOL],
        "tool_choice": "auto",
        "input_audio_format": "pcm16",
        "input_audio_transcription": {"model": "whisper-1", "language": None, "prompt": None},
        "input_audio_noise_reduction": None,
        "turn_detection": {
            "type": "server_vad",
            "threshold": 0.5,
            "prefix_padding_ms": 300,
            "silence_duration_ms": 500,
            "create_response": True,
            "interrupt_response": True,
        },
        "output_audio_format": "g711_ulaw",
        "voice": "marin",
        "speed": 1.0,
    }


def test_beta_session_drops_models_beta_does_not_know() -> None:
    event = {
        "type": "session.created",
        "event_id": "e",
        "session": {**GA_SESSION, "model": "parley-local"},
    }
    beta = server_event_to_beta(event)
    assert beta is not None and "model" not in beta["session"]
    BETA_SERVER.validate_python(beta)


def test_beta_session_tool_choice_function_and_custom_voice() -> None:
    session = {
        **GA_SESSION,
        "tool_choice": {"type": "function", "name": "get_weather"},
        "audio": {"output": {"voice": {"id": "voice_1234"}}},
    }
    beta = server_event_to_beta({"type": "session.updated", "event_id": "e", "session": session})
    assert beta is not None
    assert beta["session"]["tool_choice"] == "get_weather"
    assert beta["session"]["voice"] == "voice_1234"
    BETA_SERVER.validate_python(beta)


def test_beta_response_done_is_flat() -> None:
    beta = server_event_to_beta(SERVER_CASES[15][0])
    assert beta is not None
    response = beta["response"]
    assert response["modalities"] == ["text", "audio"]
    assert response["voice"] == "marin" and response["output_audio_format"] == "pcm16"
    assert "audio" not in response and "output_modalities" not in response
    assert response["output"][0]["content"] == [{"type": "audio", "transcript": "Hello there."}]
    assert response["usage"]["input_token_details"] == {
        "text_tokens": 120,
        "audio_tokens": 60,
        "image_tokens": 0,
        "cached_tokens": 0,
    }
    assert response["usage"]["output_tokens"] == 73


def test_beta_item_parts_are_renamed_and_images_dropped() -> None:
    added = server_event_to_beta(SERVER_CASES[3][0])
    assert added is not None and added["previous_item_id"] is None
    assert added["item"]["content"] == [{"type": "input_audio", "transcript": None}]
    text_part = server_event_to_beta(
        {
            "type": "response.content_part.added",
            "event_id": "e",
            **IDS,
            "part": {"type": "output_text", "text": ""},
        }
    )
    assert text_part is not None and text_part["part"] == {"type": "text", "text": ""}


@pytest.mark.parametrize(
    "ga",
    [
        {"type": "conversation.item.done", "event_id": "e", "item": ASSISTANT_ITEM},
        {
            "type": "input_audio_buffer.timeout_triggered",
            "event_id": "e",
            "item_id": "item_1",
            "audio_start_ms": 0,
            "audio_end_ms": 6000,
        },
        {
            "type": "conversation.item.input_audio_transcription.segment",
            "event_id": "e",
            "item_id": "item_1",
            "content_index": 0,
            "id": "seg_1",
            "start": 0.0,
            "end": 1.0,
            "speaker": "A",
            "text": "Hi",
        },
        {"type": "mcp_list_tools.in_progress", "event_id": "e", "item_id": "item_9"},
    ],
    ids=lambda ga: ga["type"],
)
def test_beta_has_no_counterpart_for_some_ga_events(ga: dict[str, Any]) -> None:
    assert GA_SERVER.validate_python(ga).type == ga["type"]
    assert server_event_to_beta(ga) is None


def test_beta_unknown_or_untyped_server_events_are_dropped() -> None:
    assert server_event_to_beta({"type": "parley.usage"}) is None
    assert server_event_to_beta({"event_id": "e"}) is None
