"""The ``openai`` LLM: any OpenAI-compatible Chat Completions endpoint, streamed.

Talks to vLLM, the llama.cpp server, Ollama, OpenAI, or anything else that serves
``POST /v1/chat/completions`` with server-sent events, through the official ``openai`` SDK. It
maps parley's messages and tools onto the wire and the streamed chunks back onto
:data:`~parley.engines.base.LLMEvent`; it keeps no conversation state and never retries a stream
that has begun (the SDK retries only failed connections, ``max_retries`` times).
"""

from __future__ import annotations

import math
from collections.abc import AsyncGenerator, Sequence
from typing import Any, Literal, assert_never, cast

import httpx
import openai

from parley.engines.base import (
    ChatRequest,
    ContentPart,
    Finish,
    ImagePart,
    LLMEvent,
    Message,
    TextDelta,
    TextPart,
    ToolCallDelta,
    ToolSpec,
    Usage,
    estimate_message_tokens,
)
from parley.errors import EngineError, EngineUnavailableError

__all__ = ["OpenAILLM", "to_wire_messages", "to_wire_tool_choice", "to_wire_tools"]

FinishReason = Literal["stop", "length", "tool_calls", "content_filter"]
_FINISH_REASONS: frozenset[str] = frozenset({"stop", "length", "tool_calls", "content_filter"})


class OpenAILLM:
    """An LLM served over the OpenAI Chat Completions API.

    ``api_key`` may be None for servers that need none (the SDK insists on some string).
    ``supports_vision`` says whether the model takes images; when false, image parts are left
    out of what is sent rather than failing the request. ``http_client`` replaces the SDK's own
    (tests pass one over ``httpx.MockTransport``); it is closed by :meth:`aclose`.
    """

    name = "openai"

    def __init__(
        self,
        *,
        base_url: str,
        model: str,
        api_key: str | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout_s: float = 60.0,
        max_retries: int = 1,
        supports_vision: bool = False,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        self.model = model
        self.supports_vision = supports_vision
        self._base_url = base_url
        self._temperature = temperature
        self._max_tokens = max_tokens
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            timeout=timeout_s,
            max_retries=max_retries,
            # openai 3.x types this as an httpx2 client but takes an httpx one too; 1.x and 2.x
            # type it as httpx's.
            http_client=cast(Any, http_client),
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def stream(self, request: ChatRequest) -> AsyncGenerator[LLMEvent, None]:
        # Settings nobody chose are left out rather than sent as null: servers differ in what
        # they accept (and SDK versions in how "not given" is spelled).
        params: dict[str, Any] = {
            "model": self.model,
            "messages": to_wire_messages(request.messages, vision=self.supports_vision),
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            params["tools"] = to_wire_tools(request.tools)
            params["tool_choice"] = to_wire_tool_choice(request.tool_choice)
        max_tokens = request.max_tokens if request.max_tokens is not None else self._max_tokens
        if max_tokens is not None:
            params["max_tokens"] = max_tokens
        temperature = request.temperature if request.temperature is not None else self._temperature
        if temperature is not None:
            params["temperature"] = temperature

        usage: Usage | None = None
        finish: FinishReason = "stop"
        output_chars = 0
        try:
            stream = await self._client.chat.completions.create(**params, stream=True)
            # Leaving this block any way (the end, an error, the caller closing or cancelling
            # this generator) closes the HTTP response, so the server stops generating.
            async with stream:
                async for chunk in stream:
                    if chunk.usage is not None:
                        usage = Usage(
                            chunk.usage.prompt_tokens or 0, chunk.usage.completion_tokens or 0
                        )
                    for choice in chunk.choices[:1]:
                        delta = choice.delta
                        if delta is not None and delta.content:
                            output_chars += len(delta.content)
                            yield TextDelta(delta.content)
                        for call in (delta.tool_calls if delta is not None else None) or ():
                            function = call.function
                            arguments = (function.arguments if function else None) or ""
                            output_chars += len(arguments)
                            yield ToolCallDelta(
                                index=call.index if call.index is not None else 0,
                                arguments=arguments,
                                id=call.id,
                                name=function.name if function else None,
                            )
                        if choice.finish_reason is not None:
                            finish = _finish_reason(choice.finish_reason)
        except openai.APIStatusError as exc:
            raise EngineError(
                f"LLM endpoint {self._base_url} answered {exc.status_code}: {_server_message(exc)}"
            ) from exc
        except openai.APITimeoutError as exc:
            raise EngineUnavailableError(f"LLM endpoint {self._base_url} timed out") from exc
        except openai.APIConnectionError as exc:
            why = _one_line(str(exc.__cause__ or exc)) or type(exc.__cause__).__name__
            raise EngineUnavailableError(
                f"cannot reach LLM endpoint {self._base_url}: {why}"
            ) from exc
        except openai.APIError as exc:
            # An error event in the middle of the stream.
            raise EngineError(
                f"LLM endpoint {self._base_url} failed: {_one_line(exc.message)}"
            ) from exc
        except httpx.TransportError as exc:
            # Older SDKs let transport errors after the headers through unwrapped.
            raise EngineUnavailableError(
                f"LLM endpoint {self._base_url} dropped the stream: {_one_line(str(exc))}"
            ) from exc
        if usage is None:
            # Some servers never report usage: estimate, as the faq engine does.
            prompt = sum(estimate_message_tokens(m) for m in request.messages)
            usage = Usage(prompt, math.ceil(output_chars / 4))
        yield usage
        yield Finish(finish)


# --- Mapping onto the wire -------------------------------------------------------------------


def to_wire_messages(messages: Sequence[Message], *, vision: bool = True) -> list[dict[str, Any]]:
    """Messages as Chat Completions dicts; image parts only when ``vision``."""
    return [_wire_message(m, vision=vision) for m in messages]


def _wire_message(message: Message, *, vision: bool) -> dict[str, Any]:
    match message.role:
        case "system":
            return {"role": "system", "content": message.text}
        case "user":
            if isinstance(message.content, str):
                return {"role": "user", "content": message.content}
            parts = [_wire_part(p) for p in message.content if vision or isinstance(p, TextPart)]
            return {"role": "user", "content": parts}
        case "assistant":
            wire: dict[str, Any] = {"role": "assistant", "content": message.text or None}
            if message.tool_calls:
                wire["tool_calls"] = [
                    {
                        "id": call.id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                    for call in message.tool_calls
                ]
            elif wire["content"] is None:
                wire["content"] = ""
            return wire
        case "tool":
            return {
                "role": "tool",
                "tool_call_id": message.tool_call_id or "",
                "content": message.text,
            }
        case _:
            assert_never(message.role)


def _wire_part(part: ContentPart) -> dict[str, Any]:
    match part:
        case TextPart(text=text):
            return {"type": "text", "text": text}
        case ImagePart(url=url, detail=detail):
            return {"type": "image_url", "image_url": {"url": url, "detail": detail}}
        case _:
            assert_never(part)


def to_wire_tools(tools: Sequence[ToolSpec]) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters or {"type": "object", "properties": {}},
            },
        }
        for tool in tools
    ]


def to_wire_tool_choice(choice: str) -> str | dict[str, Any]:
    """``auto``, ``none`` and ``required`` pass through; anything else names a function."""
    if choice in ("auto", "none", "required"):
        return choice
    return {"type": "function", "function": {"name": choice}}


# --- Reading the stream ----------------------------------------------------------------------


def _finish_reason(reason: str) -> FinishReason:
    # Servers invent their own ("eos", "abort", legacy "function_call"); all mean it stopped.
    return cast(FinishReason, reason) if reason in _FINISH_REASONS else "stop"


def _server_message(exc: openai.APIStatusError) -> str:
    """The server's own words from an error response, on one line."""
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return _one_line(error["message"])
        if isinstance(error, str):
            return _one_line(error)
    if isinstance(body, str) and body.strip():
        return _one_line(body)
    return _one_line(exc.message)


def _one_line(text: str, limit: int = 300) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."
