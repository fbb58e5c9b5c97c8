"""A scripted OpenAI-compatible Chat Completions server on a loopback port (a test double).

``parley serve`` talks to it through its real ``openai`` engine, over real HTTP, so the
Realtime tests can exercise tools, images, prompt templates and slow replies end to end. Its
behaviour is chosen by the request, the way a model's would be:

- tools offered and the last message from the user: call the first tool (``{"city": "Paris"}``);
- the last message a tool's output: "The weather is <output>.";
- an image among the messages: "I can see the image you sent.";
- the system prompt contains ``SLOW``: a long reply, one word every 40 ms;
- otherwise: "You said: <last user text>."
Every request body is recorded in ``requests``.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    body = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": "fake",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return f"data: {json.dumps(body)}\n\n"


def _text_of(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, str):
        return content
    return " ".join(p.get("text", "") for p in content if p.get("type") == "text")


class FakeLLMServer:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.port = free_port()
        app = Starlette(routes=[Route("/v1/chat/completions", self._complete, methods=["POST"])])
        self._server = uvicorn.Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off"
            )
        )
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("fake LLM server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=5)

    async def _complete(self, request: Request) -> StreamingResponse:
        body = await request.json()
        self.requests.append(body)
        return StreamingResponse(self._reply(body), media_type="text/event-stream")

    async def _reply(self, body: dict[str, Any]) -> AsyncIterator[str]:
        messages = body["messages"]
        last = messages[-1]
        system = " ".join(_text_of(m) for m in messages if m["role"] == "system")
        has_image = any(
            isinstance(m.get("content"), list)
            and any(p.get("type") == "image_url" for p in m["content"])
            for m in messages
        )
        if body.get("tools") and last["role"] == "user":
            name = body["tools"][0]["function"]["name"]
            yield _chunk(
                {
                    "role": "assistant",
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": "call_fake1",
                            "type": "function",
                            "function": {"name": name, "arguments": ""},
                        }
                    ],
                }
            )
            for piece in ('{"city": ', '"Paris"}'):
                yield _chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
            yield _chunk({}, "tool_calls")
        else:
            if last["role"] == "tool":
                text = f"The weather is {_text_of(last)}."
            elif has_image:
                text = "I can see the image you sent."
            elif "SLOW" in system:
                text = " ".join(f"word{i}," for i in range(150)) + " done."
            else:
                text = f"You said: {_text_of(last)}."
            for word in text.split(" "):
                if "SLOW" in system:
                    await asyncio.sleep(0.04)
                yield _chunk({"content": word + " "})
            yield _chunk({}, "stop")
        usage = {"prompt_tokens": 20, "completion_tokens": 10, "total_tokens": 30}
        last_chunk = {
            "id": "x",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake",
            "choices": [],
            "usage": usage,
        }
        yield f"data: {json.dumps(last_chunk)}\n\n"
        yield "data: [DONE]\n\n"
