"""Builders of the Realtime API's objects as plain dicts (GA shapes of ``openai.types.realtime``).

Pure functions and a small record of each conversation item as the client sees it. Server events
are dicts because they go straight to ``json.dumps``; their shapes are checked against the
official SDK's models in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from parley.engines.base import Usage

__all__ = [
    "ItemRecord",
    "assistant_item",
    "function_call_item",
    "function_output_item",
    "response_object",
    "system_item",
    "usage_object",
    "user_item",
]

ItemStatus = Literal["completed", "incomplete", "in_progress"]


@dataclass(slots=True)
class ItemRecord:
    """A conversation item as the client sees it; ``wire`` is its current GA dict."""

    id: str
    wire: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)


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
