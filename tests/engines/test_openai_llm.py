from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from parley.config import LLMSettings
from parley.engines.base import (
    LLM,
    ChatRequest,
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
)
from parley.engines.openai_llm import OpenAILLM
from parley.engines.registry import build_llm
from parley.errors import EngineError, EngineUnavailableError
from tests.fakes.openai_server import BASE_URL, MODEL, FakeChatCompletionsServer

WEATHER = ToolSpec(
    name="get_weather",
    description="Current weather in a city.",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}},
)


@pytest.fixture
def server() -> FakeChatCompletionsServer:
    return FakeChatCompletionsServer()


@pytest.fixture
async def llm(server: FakeChatCompletionsServer) -> AsyncIterator[OpenAILLM]:
    engine = OpenAILLM(base_url=BASE_URL, model=MODEL, max_retries=0, http_client=server.client())
    yield engine
    await engine.aclose()


async def make_llm(server: FakeChatCompletionsServer, **options: Any) -> OpenAILLM:
    return OpenAILLM(
        base_url=BASE_URL, model=MODEL, max_retries=0, http_client=server.client(), **options
    )


def ask(text: str, **fields: Any) -> ChatRequest:
    return ChatRequest(messages=(Message("user", text),), **fields)


async def collect(llm: LLM, request: ChatRequest) -> list[LLMEvent]:
    return [event async for event in llm.stream(request)]


def test_openai_llm_satisfies_llm_protocol(llm: OpenAILLM) -> None:
    assert isinstance(llm, LLM)
    assert llm.name == "openai"
    assert llm.supports_vision is False


async def test_openai_llm_streams_text(llm: OpenAILLM, server: FakeChatCompletionsServer) -> None:
    server.stream_text("Hel", "lo", " there.", usage=(12, 3))

    events = await collect(llm, ask("hi"))

    assert events == [
        TextDelta("Hel"),
        TextDelta("lo"),
        TextDelta(" there."),
        Usage(12, 3),
        Finish("stop"),
    ]


async def test_openai_llm_requests_a_stream_with_usage(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_text("ok")

    await collect(llm, ask("hi"))

    body = server.last_request
    assert body["model"] == MODEL
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    # Nothing the caller did not ask for: servers differ in what they accept.
    for absent in ("tools", "tool_choice", "temperature", "max_tokens"):
        assert absent not in body
    assert server.headers[-1]["authorization"] == "Bearer not-needed"


async def test_openai_llm_sends_api_key_temperature_and_max_tokens(
    server: FakeChatCompletionsServer,
) -> None:
    llm = await make_llm(server, api_key="sk-test", temperature=0.2, max_tokens=50)
    server.stream_text("a")
    server.stream_text("b")

    await collect(llm, ask("hi"))
    await collect(llm, ask("hi", temperature=0.9, max_tokens=7))
    await llm.aclose()

    first, second = server.requests
    assert (first["temperature"], first["max_tokens"]) == (0.2, 50)
    assert (second["temperature"], second["max_tokens"]) == (0.9, 7)
    assert server.headers[0]["authorization"] == "Bearer sk-test"


async def test_openai_llm_assembles_tool_call_deltas(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_tool_call("get_weather", ['{"ci', 'ty": "Os', 'lo"}'], call_id="call_9")

    events = await collect(llm, ask("weather in Oslo?", tools=(WEATHER,)))

    deltas = [e for e in events if isinstance(e, ToolCallDelta)]
    assert {d.index for d in deltas} == {0}
    assert [d.id for d in deltas if d.id] == ["call_9"]
    assert [d.name for d in deltas if d.name] == ["get_weather"]
    assert json.loads("".join(d.arguments for d in deltas)) == {"city": "Oslo"}
    assert not any(isinstance(e, TextDelta) for e in events)
    assert events[-1] == Finish("tool_calls")
    assert isinstance(events[-2], Usage)


async def test_openai_llm_maps_tools(llm: OpenAILLM, server: FakeChatCompletionsServer) -> None:
    server.stream_text("ok")

    await collect(llm, ask("hi", tools=(WEATHER, ToolSpec(name="hang_up"))))

    assert server.last_request["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Current weather in a city.",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        },
        {
            "type": "function",
            "function": {
                "name": "hang_up",
                "description": "",
                "parameters": {"type": "object", "properties": {}},
            },
        },
    ]


@pytest.mark.parametrize(
    ("choice", "wire"),
    [
        ("auto", "auto"),
        ("none", "none"),
        ("required", "required"),
        ("get_weather", {"type": "function", "function": {"name": "get_weather"}}),
    ],
)
async def test_openai_llm_maps_tool_choice(
    llm: OpenAILLM, server: FakeChatCompletionsServer, choice: str, wire: object
) -> None:
    server.stream_text("ok")

    await collect(llm, ask("hi", tools=(WEATHER,), tool_choice=choice))

    assert server.last_request["tool_choice"] == wire


async def test_openai_llm_maps_conversation_messages(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_text("It is sunny.")
    call = ToolCall(id="call_1", name="get_weather", arguments='{"city": "Oslo"}')
    request = ChatRequest(
        messages=(
            Message("system", "Be brief."),
            Message("user", "Weather in Oslo?"),
            Message("assistant", tool_calls=(call,)),
            Message("tool", '{"sky": "sunny"}', tool_call_id="call_1"),
            Message("assistant", "Let me check."),
            Message("user", (TextPart("And "), TextPart("tomorrow?"))),
        ),
        tools=(WEATHER,),
    )

    await collect(llm, request)

    assert server.last_request["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Oslo?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
        {"role": "assistant", "content": "Let me check."},
        {
            "role": "user",
            "content": [{"type": "text", "text": "And "}, {"type": "text", "text": "tomorrow?"}],
        },
    ]


async def test_openai_llm_sends_image_parts_when_vision(
    server: FakeChatCompletionsServer,
) -> None:
    llm = await make_llm(server, supports_vision=True)
    server.stream_text("A cat.")
    image = ImagePart("data:image/png;base64,iVBORw0KGgo=", detail="low")

    await collect(llm, ChatRequest(messages=(Message("user", (TextPart("What is it?"), image)),)))
    await llm.aclose()

    assert server.last_request["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"},
        {
            "type": "image_url",
            "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"},
        },
    ]


async def test_openai_llm_leaves_images_out_without_vision(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_text("I can't see images.")
    image = ImagePart("data:image/png;base64,iVBORw0KGgo=")

    await collect(llm, ChatRequest(messages=(Message("user", (TextPart("What is it?"), image)),)))

    assert server.last_request["messages"][0]["content"] == [
        {"type": "text", "text": "What is it?"}
    ]


async def test_openai_llm_estimates_usage_when_server_sends_none(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_text("12345678", "9", usage=None)

    events = await collect(llm, ask("x" * 40))

    # ~4 characters a token over the answer; the prompt as the history budget counts it
    # (4 tokens of message framing on top of its text).
    assert events[-2:] == [Usage(4 + 10, 3), Finish("stop")]


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("length", "length"), ("content_filter", "content_filter"), ("eos", "stop"), (None, "stop")],
)
async def test_openai_llm_maps_finish_reasons(
    llm: OpenAILLM, server: FakeChatCompletionsServer, reason: str | None, finish: str
) -> None:
    server.stream_text("cut", finish_reason=reason, usage=(1, 1))

    events = await collect(llm, ask("hi"))

    assert events[-1] == Finish(finish)  # type: ignore[arg-type]


async def test_openai_llm_http_error_raises_engine_error(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.fail(500, "model crashed\nwhile loading")

    with pytest.raises(EngineError) as caught:
        await collect(llm, ask("hi"))

    assert not isinstance(caught.value, EngineUnavailableError)
    message = str(caught.value)
    assert "500" in message
    assert "model crashed while loading" in message
    assert "\n" not in message


async def test_openai_llm_connection_error_raises_engine_unavailable(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.refuse_connection()

    with pytest.raises(EngineUnavailableError, match="connection refused"):
        await collect(llm, ask("hi"))


async def test_openai_llm_timeout_raises_engine_unavailable(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.time_out()

    with pytest.raises(EngineUnavailableError, match="timed out"):
        await collect(llm, ask("hi"))


async def test_openai_llm_retries_a_refused_connection(
    server: FakeChatCompletionsServer,
) -> None:
    llm = OpenAILLM(base_url=BASE_URL, model=MODEL, max_retries=1, http_client=server.client())
    server.refuse_connection()
    server.stream_text("second time lucky")

    events = await collect(llm, ask("hi"))
    await llm.aclose()

    assert events[0] == TextDelta("second time lucky")
    assert len(server.requests) == 2


async def test_openai_llm_aclose_after_first_delta_closes_the_stream(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_then_hang("Once", " upon")
    stream = llm.stream(ask("tell me a long story"))

    async with asyncio.timeout(2):
        first = await anext(stream)
        await stream.aclose()

    assert first == TextDelta("Once")
    assert server.closed_streams == 1


async def test_openai_llm_cancel_while_waiting_closes_the_stream(
    llm: OpenAILLM, server: FakeChatCompletionsServer
) -> None:
    server.stream_then_hang("Once")
    seen: list[LLMEvent] = []
    first = asyncio.Event()

    async def consume() -> None:
        async for event in llm.stream(ask("tell me a long story")):
            seen.append(event)
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(2):
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    assert seen == [TextDelta("Once")]
    assert server.closed_streams == 1


async def test_openai_llm_built_by_registry_with_options() -> None:
    settings = LLMSettings(
        base_url=BASE_URL, model="llama3", options={"supports_vision": True, "max_retries": 0}
    )

    llm = build_llm(settings)

    assert isinstance(llm, OpenAILLM)
    assert llm.supports_vision is True
    assert llm.model == "llama3"
    await llm.aclose()
