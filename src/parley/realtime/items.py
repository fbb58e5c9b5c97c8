"""The Realtime API's objects as plain dicts (GA shapes of ``openai.types.realtime``), both ways.

Pure functions: builders of server events, items and responses, and :func:`from_client`, which
reads a client's item into the message the model sees and the item the client sees. Server
events are dicts because they go straight to ``json.dumps``; their shapes are checked against
the official SDK's models in the tests.
"""

from __future__ import annotations

from typing import Any, Literal, assert_never

from parley.audio.formats import WireFormat, b64decode_audio, decode_wire
from parley.audio.frames import Frame
from parley.engines.base import ContentPart, ImagePart, Message, TextPart, ToolCall, Usage
from parley.errors import ClientError, Code, NotFoundError, ProtocolError
from parley.ids import new_event_id, new_id
from parley.pipeline.history import History, Item
from parley.realtime import wire

__all__ = [
    "add_client_item",
    "assistant_item",
    "check_truncate",
    "event",
    "from_client",
    "function_call_item",
    "function_output_item",
    "response_object",
    "set_item_text",
    "shown",
    "system_item",
    "usage_object",
    "user_item",
]

ItemStatus = Literal["completed", "incomplete", "in_progress"]


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: its ``type``, a fresh ``event_id``, then its fields."""
    return {"type": kind, "event_id": new_event_id(), **fields}


def set_item_text(item: dict[str, Any], text: str) -> None:
    """Put ``text`` in a message item's text or transcript part (truncation, transcripts)."""
    for part in item.get("content", []):
        if part["type"] in ("output_audio", "input_audio"):
            part["transcript"] = text
        elif part["type"] == "output_text":
            part["text"] = text


def _item(item_id: str, kind: str, status: ItemStatus, **fields: Any) -> dict[str, Any]:
    return {"id": item_id, "type": kind, "object": "realtime.item", "status": status, **fields}


def user_item(item_id: str, content: list[dict[str, Any]]) -> dict[str, Any]:
    return _item(item_id, "message", "completed", role="user", content=content)


def system_item(item_id: str, text: str) -> dict[str, Any]:
    return _item(
        item_id,
        "message",
        "completed",
        role="system",
        content=[{"type": "input_text", "text": text}],
    )


def assistant_item(
    item_id: str, status: ItemStatus, *, audio: bool, text: str | None = None
) -> dict[str, Any]:
    """An assistant message; ``text`` None means no content part yet."""
    content: list[dict[str, Any]] = []
    if text is not None:
        content.append(
            {"type": "output_audio", "transcript": text}
            if audio
            else {"type": "output_text", "text": text}
        )
    return _item(item_id, "message", status, role="assistant", content=content)


def function_call_item(
    item_id: str, status: ItemStatus, *, call_id: str, name: str, arguments: str
) -> dict[str, Any]:
    return _item(item_id, "function_call", status, call_id=call_id, name=name, arguments=arguments)


def function_output_item(item_id: str, *, call_id: str, output: str) -> dict[str, Any]:
    return _item(item_id, "function_call_output", "completed", call_id=call_id, output=output)


def usage_object(usage: Usage | None, *, audio_out_tokens: int = 0) -> dict[str, Any]:
    """Token usage as the Realtime API reports it; parley's models bill text tokens."""
    inp = usage.input_tokens if usage else 0
    out = usage.output_tokens if usage else 0
    return {
        "total_tokens": inp + out + audio_out_tokens,
        "input_tokens": inp,
        "output_tokens": out + audio_out_tokens,
        "input_token_details": {"text_tokens": inp, "audio_tokens": 0, "cached_tokens": 0},
        "output_token_details": {"text_tokens": out, "audio_tokens": audio_out_tokens},
    }


def response_object(
    response_id: str,
    *,
    status: Literal["in_progress", "completed", "cancelled", "incomplete", "failed"],
    conversation_id: str | None,
    modalities: list[str],
    output: list[dict[str, Any]],
    voice: str,
    output_format: dict[str, Any],
    max_output_tokens: int | Literal["inf"],
    metadata: dict[str, str] | None,
    usage: dict[str, Any] | None = None,
    reason: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    details: dict[str, Any] | None = None
    if status not in ("in_progress", "completed"):
        details = {"type": status, "reason": reason}
        if error is not None:
            details["error"] = error
    return {
        "id": response_id,
        "object": "realtime.response",
        "status": status,
        "status_details": details,
        "output": output,
        "conversation_id": conversation_id,
        "output_modalities": modalities,
        "max_output_tokens": max_output_tokens,
        "audio": {"output": {"format": output_format, "voice": voice}},
        "usage": usage,
        "metadata": metadata,
    }


def from_client(
    item: wire.ConversationItem,
    item_id: str,
    *,
    vision: bool,
    input_format: WireFormat,
    event_id: str | None,
) -> tuple[Message, dict[str, Any], Frame | None]:
    """A client's ``conversation.item.create`` item as (what the model sees, what the client
    sees, audio still to recognise), or :class:`ProtocolError`."""
    audio: Frame | None = None
    match item:
        case wire.SystemMessageItem():
            text = " ".join(p.text for p in item.content)
            return Message("system", text), system_item(item_id, text), None
        case wire.UserMessageItem():
            parts: list[ContentPart] = []
            content: list[dict[str, Any]] = []
            for i, part in enumerate(item.content):
                match part:
                    case wire.InputTextPart():
                        parts.append(TextPart(part.text))
                        content.append({"type": "input_text", "text": part.text})
                    case wire.InputImagePart():
                        if not vision:
                            raise ProtocolError(
                                "the configured language model cannot see images "
                                "(it does not declare vision); send text instead",
                                param=f"item.content[{i}]",
                                code=Code.IMAGE_INPUT_NOT_SUPPORTED,
                                event_id=event_id,
                            )
                        if not part.image_url:
                            raise ProtocolError(
                                "input_image needs an image_url",
                                param=f"item.content[{i}].image_url",
                                code=Code.MISSING_REQUIRED_PARAMETER,
                                event_id=event_id,
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
                            param = f"item.content[{i}].audio"
                            data = b64decode_audio(part.audio, param=param)
                            try:
                                audio = decode_wire(data, input_format)
                            except ClientError as exc:
                                raise ProtocolError(
                                    exc.message, param=param, code=exc.code, event_id=event_id
                                ) from exc
                        content.append({"type": "input_audio", "transcript": part.transcript})
            images = any(isinstance(p, ImagePart) for p in parts)
            message = Message(
                "user",
                tuple(parts)
                if images
                else " ".join(p.text for p in parts if isinstance(p, TextPart)),
            )
            return message, user_item(item_id, content), audio
        case wire.AssistantMessageItem():
            text = " ".join(
                (p.text if isinstance(p, wire.OutputTextPart) else p.transcript or "")
                for p in item.content
            )
            spoken = any(isinstance(p, wire.OutputAudioPart) for p in item.content)
            return (
                Message("assistant", text),
                assistant_item(item_id, "completed", audio=spoken, text=text),
                None,
            )
        case wire.FunctionCallItem():
            call_id = item.call_id or new_id("call")
            return (
                Message("assistant", tool_calls=(ToolCall(call_id, item.name, item.arguments),)),
                function_call_item(
                    item_id, "completed", call_id=call_id, name=item.name, arguments=item.arguments
                ),
                None,
            )
        case wire.FunctionCallOutputItem():
            return (
                Message("tool", item.output, tool_call_id=item.call_id),
                function_output_item(item_id, call_id=item.call_id, output=item.output),
                None,
            )
        case _:
            assert_never(item)


def shown(history: History, item_id: str, event_id: str | None) -> Item:
    """An item the client has been shown, or ``item_not_found``."""
    item = history.get(item_id)
    if item is None or item.view is None:
        raise NotFoundError(
            f"Item with item_id not found: {item_id}",
            param="item_id",
            code=Code.ITEM_NOT_FOUND,
            event_id=event_id,
        )
    return item


def add_client_item(
    history: History,
    ev: wire.ConversationItemCreateEvent,
    *,
    vision: bool,
    input_format: WireFormat,
) -> tuple[list[dict[str, Any]], Frame | None]:
    """Put a client's item in the conversation: its events, and its audio still to recognise."""
    item_id = ev.item.id or new_id("item")
    if history.get(item_id) is not None:
        raise ProtocolError(
            f"an item with id {item_id} already exists",
            param="item.id",
            code=Code.INVALID_VALUE,
            event_id=ev.event_id,
        )
    after = ev.previous_item_id
    if after is not None and after != "root":
        shown(history, after, ev.event_id)  # it must exist
    message, view, audio = from_client(
        ev.item, item_id, vision=vision, input_format=input_format, event_id=ev.event_id
    )
    item = history.add(message, item_id=item_id, after=None if after == "root" else after)
    if after == "root":
        history.move_to_front(item_id)
    item.view = view
    previous = history.previous_shown(item_id)
    return [
        event("conversation.item.added", previous_item_id=previous, item=view),
        event("conversation.item.done", previous_item_id=previous, item=view),
    ], audio


def check_truncate(
    history: History, ev: wire.ConversationItemTruncateEvent, audio_ms: float | None
) -> None:
    """A ``conversation.item.truncate`` the session can carry out, or :class:`ProtocolError`
    (``audio_ms``: how much audio the item has, when known)."""
    item = shown(history, ev.item_id, ev.event_id)
    if item.view is None or item.view.get("role") != "assistant":
        raise ProtocolError(
            "only assistant messages can be truncated",
            param="item_id",
            code=Code.INVALID_VALUE,
            event_id=ev.event_id,
        )
    if audio_ms is not None and ev.audio_end_ms > audio_ms + 1:
        raise ProtocolError(
            f"audio_end_ms ({ev.audio_end_ms}) is beyond the item's audio ({int(audio_ms)} ms)",
            param="audio_end_ms",
            code=Code.INVALID_VALUE,
            event_id=ev.event_id,
        )
