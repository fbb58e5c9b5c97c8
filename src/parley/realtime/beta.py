"""The beta Realtime protocol's names and shapes, mapped to and from the GA protocol.

Clients that connect with the header ``OpenAI-Beta: realtime=v1`` (or the subprotocol
``openai-beta.realtime-v1``) speak the beta dialect: flat session fields (``modalities``,
``input_audio_format: "pcm16"``, ``voice``, ``turn_detection``), ``response.audio.delta`` for
``response.output_audio.delta``, content parts ``text``/``audio`` for the assistant's
``output_text``/``output_audio``. parley speaks GA inside; this module rewrites a beta client's
JSON object into GA before parsing, and a GA server event into beta before sending.

Both directions work on plain dicts and never validate: a shape they do not expect passes
through unchanged, for the GA parser to reject with a proper error. They never mutate their
argument. Known losses: beta has no ``conversation.item.done``, idle timeouts, images, or prompt
and truncation settings, so those are dropped on the way out; beta's ``temperature`` has no GA
field and is dropped on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parley.audio.formats import parse_wire_format
from parley.errors import BadAudioError

__all__ = [
    "BETA_SERVER_EVENT_TYPES",
    "client_event_from_beta",
    "server_event_to_beta",
]

_TOOL_MODES = frozenset({"auto", "none", "required"})

# ----------------------------------------------------------------------------- beta -> GA


def client_event_from_beta(obj: dict[str, Any]) -> dict[str, Any]:
    """A beta client event (decoded JSON) as the GA event it means; others are returned as is."""
    out = dict(obj)
    match obj.get("type"):
        case "session.update":
            out["session"] = _session_from_beta(obj.get("session"), "realtime")
        case "transcription_session.update":
            out["type"] = "session.update"
            out["session"] = _session_from_beta(obj.get("session"), "transcription")
        case "response.create":
            if "response" in obj:
                out["response"] = _response_from_beta(obj["response"])
        case "conversation.item.create":
            if "item" in obj:
                out["item"] = _item_from_beta(obj["item"])
        case _:
            pass
    return out


def _format_from_beta(value: object) -> object:
    """``pcm16`` to ``{"type": "audio/pcm", "rate": 24000}``; an unknown name keeps its text."""
    if not isinstance(value, str):
        return value
    try:
        fmt = parse_wire_format(value)
    except BadAudioError:
        return {"type": value}
    if fmt.ga_type == "audio/pcm":
        return {"type": "audio/pcm", "rate": fmt.sample_rate}
    return {"type": fmt.ga_type}


def _modalities_from_beta(value: object) -> object:
    # Beta's ["text", "audio"] is GA's ["audio"]: audio always comes with its transcript.
    if isinstance(value, list) and "audio" in value:
        return ["audio"]
    return value


def _tool_choice_from_beta(value: object) -> object:
    # Beta types tool_choice as a string: a mode, or the name of the function to force.
    if isinstance(value, str) and value not in _TOOL_MODES:
        return {"type": "function", "name": value}
    return value


def _turn_detection_from_beta(value: object) -> object:
    if isinstance(value, Mapping) and "type" not in value:
        return {"type": "server_vad", **value}
    return value


def _session_from_beta(session: object, kind: str) -> object:
    if not isinstance(session, Mapping):
        return session
    out: dict[str, Any] = {"type": kind}
    audio_in: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, value in session.items():
        match key:
            case "modalities":
                out["output_modalities"] = _modalities_from_beta(value)
            case "max_response_output_tokens":
                out["max_output_tokens"] = value
            case "tool_choice":
                out["tool_choice"] = _tool_choice_from_beta(value)
            case "input_audio_format":
                audio_in["format"] = _format_from_beta(value)
            case "input_audio_transcription":
                audio_in["transcription"] = value
            case "input_audio_noise_reduction":
                audio_in["noise_reduction"] = value
            case "turn_detection":
                audio_in["turn_detection"] = _turn_detection_from_beta(value)
            case "output_audio_format":
                audio_out["format"] = _format_from_beta(value)
            case "voice" | "speed":
                audio_out[key] = value
            case "temperature" | "client_secret":
                pass
            case _:
                out[key] = value
    if audio_in or audio_out:
        audio: dict[str, Any] = {}
        if audio_in:
            audio["input"] = audio_in
        if audio_out:
            audio["output"] = audio_out
        out["audio"] = audio
    return out


def _response_from_beta(response: object) -> object:
    if not isinstance(response, Mapping):
        return response
    out: dict[str, Any] = {}
    audio_out: dict[str, Any] = {}
    for key, value in response.items():
        match key:
            case "modalities":
                out["output_modalities"] = _modalities_from_beta(value)
            case "max_response_output_tokens":
                out["max_output_tokens"] = value
            case "tool_choice":
                out["tool_choice"] = _tool_choice_from_beta(value)
            case "voice":
                audio_out["voice"] = value
            case "output_audio_format":
                audio_out["format"] = _format_from_beta(value)
            case "input":
                out["input"] = (
                    [_item_from_beta(item) for item in value] if isinstance(value, list) else value
                )
            case "temperature":
                pass
            case _:
                out[key] = value
    if audio_out:
        out["audio"] = {"output": audio_out}
    return out


_ASSISTANT_PARTS = {"text": "output_text", "audio": "output_audio", "input_text": "output_text"}
_INPUT_PARTS = {"text": "input_text", "audio": "input_audio"}


def _item_from_beta(item: object) -> object:
    if not isinstance(item, Mapping):
        return item
    out = dict(item)
    if "type" not in out and "role" in out:
        out["type"] = "message"
    content = out.get("content")
    if out.get("type") == "message" and isinstance(content, list):
        names = _ASSISTANT_PARTS if out.get("role") == "assistant" else _INPUT_PARTS
        out["content"] = [_rename_part(part, names) for part in content]
    return out


def _rename_part(part: object, names: Mapping[str, str]) -> object:
    if isinstance(part, Mapping) and part.get("type") in names:
        return {**part, "type": names[part["type"]]}
    return part


# ----------------------------------------------------------------------------- GA -> beta

BETA_SERVER_EVENT_TYPES = frozenset(
    {
        "conversation.created",
        "conversation.item.created",
        "conversation.item.deleted",
        "conversation.item.input_audio_transcription.completed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.failed",
        "conversation.item.retrieved",
        "conversation.item.truncated",
        "error",
        "input_audio_buffer.cleared",
        "input_audio_buffer.committed",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "output_audio_buffer.cleared",
        "output_audio_buffer.started",
        "output_audio_buffer.stopped",
        "rate_limits.updated",
        "response.audio.delta",
        "response.audio.done",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
        "response.content_part.added",
        "response.content_part.done",
        "response.created",
        "response.done",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.done",
        "response.output_item.added",
        "response.output_item.done",
        "response.text.delta",
        "response.text.done",
        "session.created",
        "session.updated",
    }
)

_SERVER_RENAMES = {
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "conversation.item.added": "conversation.item.created",
}

# Beta types ``session.model`` as a closed list; any other name is left out rather than sent
# as a value the client's SDK would reject.
_BETA_MODELS = frozenset(
    {
        "gpt-realtime",
        "gpt-realtime-2025-08-28",
        "gpt-4o-realtime-preview",
        "gpt-4o-realtime-preview-2024-10-01",
        "gpt-4o-realtime-preview-2024-12-17",
        "gpt-4o-realtime-preview-2025-06-03",
        "gpt-4o-mini-realtime-preview",
        "gpt-4o-mini-realtime-preview-2024-12-17",
    }
)
_TURN_DETECTION_KEYS = (
    "type",
    "threshold",
    "prefix_padding_ms",
    "silence_duration_ms",
    "create_response",
    "interrupt_response",
    "eagerness",
)
_OUTPUT_PARTS = {"output_text": "text", "output_audio": "audio"}


def server_event_to_beta(obj: Mapping[str, Any]) -> dict[str, Any] | None:
    """A GA server event as its beta counterpart, or ``None`` when beta has none."""
    kind = obj.get("type")
    if not isinstance(kind, str):
        return None
    kind = _SERVER_RENAMES.get(kind, kind)
    if kind not in BETA_SERVER_EVENT_TYPES:
        return None
    out = dict(obj)
    out["type"] = kind
    if "session" in obj and kind in ("session.created", "session.updated"):
        out["session"] = _session_to_beta(obj["session"])
    if "response" in obj and kind in ("response.created", "response.done"):
        out["response"] = _response_to_beta(obj["response"])
    if "item" in obj:
        out["item"] = _item_to_beta(obj["item"])
    if "part" in obj:
        out["part"] = _rename_part(obj["part"], _OUTPUT_PARTS)
    return out


def _format_to_beta(value: object) -> object:
    if isinstance(value, Mapping) and isinstance(value.get("type"), str):
        try:
            return parse_wire_format(value["type"]).beta_name
        except BadAudioError:
            return None
    return value


def _modalities_to_beta(value: object) -> object:
    if isinstance(value, list) and "audio" in value:
        return ["text", "audio"]
    return value


def _voice_to_beta(value: object) -> object:
    if isinstance(value, Mapping):
        return value.get("id")
    return value


def _tool_choice_to_beta(value: object) -> object:
    if isinstance(value, Mapping):
        return value.get("name")
    return value


def _session_to_beta(session: object) -> object:
    if not isinstance(session, Mapping):
        return session
    out: dict[str, Any] = {}
    for key in ("id", "object", "expires_at", "instructions", "tracing"):
        if key in session:
            out[key] = session[key]
    if session.get("model") in _BETA_MODELS:
        out["model"] = session["model"]
    if "output_modalities" in session:
        out["modalities"] = _modalities_to_beta(session["output_modalities"])
    if "max_output_tokens" in session:
        out["max_response_output_tokens"] = session["max_output_tokens"]
    if "tools" in session:
        tools = session["tools"]
        out["tools"] = (
            [t for t in tools if isinstance(t, Mapping) and t.get("type", "function") == "function"]
            if isinstance(tools, list)
            else tools
        )
    if "tool_choice" in session:
        out["tool_choice"] = _tool_choice_to_beta(session["tool_choice"])
    audio = session.get("audio")
    audio_in = audio.get("input") if isinstance(audio, Mapping) else None
    audio_out = audio.get("output") if isinstance(audio, Mapping) else None
    if isinstance(audio_in, Mapping):
        if "format" in audio_in:
            out["input_audio_format"] = _format_to_beta(audio_in["format"])
        if "transcription" in audio_in:
            out["input_audio_transcription"] = _pick(
                audio_in["transcription"], ("model", "language", "prompt")
            )
        if "noise_reduction" in audio_in:
            out["input_audio_noise_reduction"] = _pick(audio_in["noise_reduction"], ("type",))
        if "turn_detection" in audio_in:
            out["turn_detection"] = _pick(audio_in["turn_detection"], _TURN_DETECTION_KEYS)
    if isinstance(audio_out, Mapping):
        if "format" in audio_out:
            out["output_audio_format"] = _format_to_beta(audio_out["format"])
        if "voice" in audio_out:
            out["voice"] = _voice_to_beta(audio_out["voice"])
        if "speed" in audio_out:
            out["speed"] = audio_out["speed"]
    return out


def _pick(value: object, keys: tuple[str, ...]) -> object:
    if not isinstance(value, Mapping):
        return value
    return {k: value[k] for k in keys if k in value}


def _response_to_beta(response: object) -> object:
    if not isinstance(response, Mapping):
        return response
    out: dict[str, Any] = {}
    for key in (
        "id",
        "object",
        "status",
        "status_details",
        "conversation_id",
        "metadata",
        "max_output_tokens",
    ):
        if key in response:
            out[key] = response[key]
    if "output_modalities" in response:
        out["modalities"] = _modalities_to_beta(response["output_modalities"])
    output = response.get("output")
    if isinstance(output, list):
        out["output"] = [_item_to_beta(item) for item in output]
    usage = response.get("usage")
    if isinstance(usage, Mapping):
        usage = dict(usage)
        details = usage.get("input_token_details")
        if isinstance(details, Mapping):
            usage["input_token_details"] = {
                k: v for k, v in details.items() if k != "cached_tokens_details"
            }
    if "usage" in response:
        out["usage"] = usage
    audio = response.get("audio")
    audio_out = audio.get("output") if isinstance(audio, Mapping) else None
    if isinstance(audio_out, Mapping):
        if "voice" in audio_out:
            out["voice"] = _voice_to_beta(audio_out["voice"])
        if "format" in audio_out:
            out["output_audio_format"] = _format_to_beta(audio_out["format"])
    return out


def _item_to_beta(item: object) -> object:
    if not isinstance(item, Mapping):
        return item
    out = dict(item)
    content = item.get("content")
    if isinstance(content, list):
        # Beta has no images; the part is left out (its neighbours' indexes shift).
        out["content"] = [
            _rename_part(part, _OUTPUT_PARTS)
            for part in content
            if not (isinstance(part, Mapping) and part.get("type") == "input_image")
        ]
    return out
