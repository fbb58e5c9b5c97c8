"""``POST /v1/chat/completions``: the wire request, its translation for the LLM engine, and the
``chat.completion`` / ``chat.completion.chunk`` objects built from the engine's events.

Messages (system, developer, user, assistant, tool; text or parts), tools, ``tool_choice``,
``max_tokens``/``max_completion_tokens``, ``temperature``, ``stream`` and
``stream_options.include_usage`` are honoured. Images go to an engine with vision and are
refused (400) otherwise; audio and file parts are refused. ``n`` must be 1. Other OpenAI
parameters (``top_p``, ``seed``, ``response_format``, ``logprobs``, ...) are ignored, not
refused. Usage comes from the engine, or is estimated (~4 characters a token) when it has none.
This module builds wire objects; it never touches HTTP.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, assert_never

from pydantic import BaseModel, ConfigDict, Field

from parley.engines.base import (
    ChatRequest,
    ContentPart,
    Finish,
    ImagePart,
    LLMEvent,
    Message,
    TextDelta,
    TextPart,
    ToolCall,
    ToolCallDelta,
    ToolSpec,
    Usage,
    estimate_tokens,
)
from parley.errors import ClientError, Code, ParleyError
from parley.server.openai_errors import sse, sse_error

__all__ = ["ChatCompletionRequest", "Completion", "Reply", "chat_request"]


class _Wire(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class _TextPart(_Wire):
    type: Literal["text"]
    text: str


class _ImageURL(_Wire):
    url: str
    detail: Literal["auto", "low", "high"] = "auto"


class _ImagePart(_Wire):
    type: Literal["image_url"]
    image_url: _ImageURL


class _OtherPart(_Wire):
    type: Literal["input_audio", "file", "refusal"]


_UserPart = Annotated[_TextPart | _ImagePart | _OtherPart, Field(discriminator="type")]
_AssistantPart = Annotated[_TextPart | _OtherPart, Field(discriminator="type")]


class _FunctionCall(_Wire):
    name: str
    arguments: str


class _ToolCall(_Wire):
    id: str
    type: Literal["function"] = "function"
    function: _FunctionCall


class _SystemMessage(_Wire):
    role: Literal["system", "developer"]
    content: str | list[_TextPart]


class _UserMessage(_Wire):
    role: Literal["user"]
    content: str | list[_UserPart]


class _AssistantMessage(_Wire):
    role: Literal["assistant"]
    content: str | list[_AssistantPart] | None = None
    tool_calls: list[_ToolCall] | None = None


class _ToolMessage(_Wire):
    role: Literal["tool"]
    content: str | list[_TextPart]
    tool_call_id: str


_ChatMessage = Annotated[
    _SystemMessage | _UserMessage | _AssistantMessage | _ToolMessage, Field(discriminator="role")
]


class _Function(_Wire):
    name: str = Field(min_length=1, max_length=64)
    description: str = ""
    parameters: dict[str, Any] = Field(default_factory=dict)


class _Tool(_Wire):
    type: Literal["function"]
    function: _Function


class _NamedFunction(_Wire):
    name: str


class _NamedToolChoice(_Wire):
    type: Literal["function"]
    function: _NamedFunction


class _StreamOptions(_Wire):
    include_usage: bool = False


class ChatCompletionRequest(_Wire):
    messages: list[_ChatMessage] = Field(min_length=1)
    model: str = "parley"
    tools: list[_Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | _NamedToolChoice | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    n: int | None = Field(None, ge=1, le=1)
    stream: bool | None = False
    stream_options: _StreamOptions | None = None


@dataclass
class _CallBuffer:
    """One tool call as its pieces arrive; an id is made up when the engine gives none."""

    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class Reply:
    """A chat completion as it accumulates (mutable: one per request, never shared)."""

    text: str = ""
    calls: dict[int, _CallBuffer] = field(default_factory=dict)
    usage: Usage | None = None
    finish: str | None = None

    def add(self, event: LLMEvent) -> None:
        match event:
            case TextDelta():
                self.text += event.text
            case ToolCallDelta():
                call = self.calls.get(event.index)
                if call is None:
                    call = self.calls[event.index] = _CallBuffer(
                        event.id or f"call_{secrets.token_hex(8)}"
                    )
                call.name = event.name or call.name
                call.arguments += event.arguments
            case Usage():
                self.usage = event
            case Finish():
                self.finish = event.reason
            case _:
                assert_never(event)


def _text_of(content: str | Sequence[object] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(p.text for p in content if isinstance(p, _TextPart))


def chat_request(req: ChatCompletionRequest, *, vision: bool) -> ChatRequest:
    """The wire request as the engines' :class:`ChatRequest`; 400 for what no engine serves."""
    messages: list[Message] = []
    for i, m in enumerate(req.messages):
        match m:
            case _SystemMessage():
                messages.append(Message("system", _text_of(m.content)))
            case _UserMessage():
                messages.append(Message("user", _user_content(m.content, i, vision=vision)))
            case _AssistantMessage():
                if isinstance(m.content, list) and any(
                    isinstance(p, _OtherPart) and p.type != "refusal" for p in m.content
                ):
                    raise ClientError(
                        "assistant content parts must be text", param=f"messages[{i}].content"
                    )
                calls = tuple(
                    ToolCall(c.id, c.function.name, c.function.arguments)
                    for c in m.tool_calls or ()
                )
                messages.append(Message("assistant", _text_of(m.content), tool_calls=calls))
            case _ToolMessage():
                messages.append(Message("tool", _text_of(m.content), tool_call_id=m.tool_call_id))
            case _:
                assert_never(m)
    tools = tuple(
        ToolSpec(t.function.name, t.function.description, t.function.parameters)
        for t in req.tools or ()
    )
    choice = "auto"
    match req.tool_choice:
        case None:
            pass
        case _NamedToolChoice():
            choice = req.tool_choice.function.name
            if choice not in {t.name for t in tools}:
                raise ClientError(
                    f"tool_choice names function {choice!r}, which is not among 'tools'",
                    param="tool_choice",
                    code=Code.INVALID_VALUE,
                )
        case "required" if not tools:
            raise ClientError(
                "tool_choice 'required' needs 'tools'", param="tool_choice", code=Code.INVALID_VALUE
            )
        case str():
            choice = req.tool_choice
    return ChatRequest(
        messages=tuple(messages),
        tools=tools,
        tool_choice=choice,
        max_tokens=req.max_completion_tokens or req.max_tokens,
        temperature=req.temperature,
    )


def _user_content(
    content: str | list[_TextPart | _ImagePart | _OtherPart], index: int, *, vision: bool
) -> str | tuple[ContentPart, ...]:
    if isinstance(content, str):
        return content
    parts: list[ContentPart] = []
    for j, part in enumerate(content):
        where = f"messages[{index}].content[{j}]"
        match part:
            case _TextPart():
                parts.append(TextPart(part.text))
            case _ImagePart():
                if not vision:
                    raise ClientError(
                        "This model does not accept images (the configured LLM engine has no"
                        " vision); send text only.",
                        param=where,
                        code=Code.IMAGE_NOT_SUPPORTED,
                    )
                parts.append(ImagePart(part.image_url.url, part.image_url.detail))
            case _OtherPart():
                raise ClientError(
                    f"content parts of type '{part.type}' are not supported; send text"
                    " (transcribe audio with /v1/audio/transcriptions first)",
                    param=where,
                    code=Code.UNSUPPORTED_CONTENT,
                )
    return tuple(parts)


@dataclass(frozen=True, slots=True)
class Completion:
    id: str
    model: str
    created: int
    prompt_tokens: int

    def _usage(self, reply: Reply) -> dict[str, int]:
        if reply.usage is not None:
            prompt, completion = reply.usage.input_tokens, reply.usage.output_tokens
        else:
            prompt = self.prompt_tokens
            args = "".join(c.name + c.arguments for c in reply.calls.values())
            completion = estimate_tokens(reply.text + args)
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def _finish(self, reply: Reply) -> str:
        return reply.finish or ("tool_calls" if reply.calls else "stop")

    def whole(self, reply: Reply) -> dict[str, Any]:
        message: dict[str, Any] = {
            "role": "assistant",
            "content": reply.text if reply.text or not reply.calls else None,
            "refusal": None,
        }
        if reply.calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for _, call in sorted(reply.calls.items())
            ]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self._finish(reply),
                    "logprobs": None,
                }
            ],
            "usage": self._usage(reply),
        }

    def _chunk(self, delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return sse(
            {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [choice],
                **extra,
            }
        )

    def _deltas(self, reply: Reply, event: LLMEvent, extra: dict[str, Any]) -> list[bytes]:
        """The chunks ``event`` adds to a stream (``reply`` is updated with it)."""
        new_call = isinstance(event, ToolCallDelta) and event.index not in reply.calls
        reply.add(event)
        match event:
            case TextDelta() if event.text:
                return [self._chunk({"content": event.text}, **extra)]
            case ToolCallDelta():
                call: dict[str, Any] = {"index": event.index}
                function: dict[str, Any] = {"arguments": event.arguments}
                if new_call:
                    call["id"] = reply.calls[event.index].id
                    call["type"] = "function"
                    function["name"] = event.name or ""
                call["function"] = function
                return [self._chunk({"tool_calls": [call]}, **extra)]
            case _:
                return []

    async def chunks(
        self,
        events: AsyncGenerator[LLMEvent, None],
        first: LLMEvent | None,
        *,
        include_usage: bool,
    ) -> AsyncGenerator[bytes, None]:
        extra: dict[str, Any] = {"usage": None} if include_usage else {}
        reply = Reply()
        try:
            async with aclosing(events):
                yield self._chunk({"role": "assistant", "content": ""}, **extra)
                if first is not None:
                    for out in self._deltas(reply, first, extra):
                        yield out
                    async for event in events:
                        for out in self._deltas(reply, event, extra):
                            yield out
        except ParleyError as exc:
            yield sse_error(exc)
            return
        yield self._chunk({}, self._finish(reply), **extra)
        if include_usage:
            usage = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": self._usage(reply),
            }
            yield sse(usage)
        yield b"data: [DONE]\n\n"
