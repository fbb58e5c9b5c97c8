"""A fake OpenAI-compatible Chat Completions server, served through ``httpx.MockTransport``.

Each test scripts the replies, one per request in order: a stream of chunks in the real wire
format (``data: {json}\\n\\n`` ... ``data: [DONE]\\n\\n``), an HTTP error, a transport failure, or a
stream that stops after some chunks and never ends. The server records every request body so a
test can assert what the engine sent, and counts the streams its client closed. Nothing touches
the network.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

BASE_URL = "http://llm.test/v1"
MODEL = "fake-model"


@dataclass(frozen=True, slots=True)
class _Stream:
    deltas: tuple[dict[str, Any], ...]
    finish_reason: str | None
    usage: tuple[int, int] | None
    hang: bool = False


@dataclass(frozen=True, slots=True)
class _Status:
    status: int
    body: dict[str, Any] | str


@dataclass(frozen=True, slots=True)
class _Raise:
    error: Callable[[httpx.Request], Exception]


_Reply = _Stream | _Status | _Raise


@dataclass
class FakeChatCompletionsServer:
    """Answers ``POST /v1/chat/completions`` from a script of replies."""

    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[httpx.Headers] = field(default_factory=list)
    closed_streams: int = 0
    _replies: deque[_Reply] = field(default_factory=deque)

    # --- scripting ----------------------------------------------------------------------------

    def stream_text(
        self, *pieces: str, finish_reason: str | None = "stop", usage: tuple[int, int] | None = None
    ) -> None:
        """One chunk per piece of text, then a finish chunk, then (if asked for) usage."""
        deltas = [{"role": "assistant", "content": p} for p in pieces[:1]]
        deltas += [{"content": p} for p in pieces[1:]]
        self.stream_deltas(deltas, finish_reason=finish_reason, usage=usage)

    def stream_tool_call(
        self,
        name: str,
        argument_pieces: Sequence[str],
        *,
        call_id: str = "call_1",
        index: int = 0,
        usage: tuple[int, int] | None = None,
    ) -> None:
        """A tool call as servers stream it: id and name first, then the arguments in pieces."""
        first = {
            "index": index,
            "id": call_id,
            "type": "function",
            "function": {"name": name, "arguments": ""},
        }
        deltas: list[dict[str, Any]] = [{"role": "assistant", "tool_calls": [first]}]
        deltas += [
            {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
            for piece in argument_pieces
        ]
        self.stream_deltas(deltas, finish_reason="tool_calls", usage=usage)

    def stream_deltas(
        self,
        deltas: Sequence[dict[str, Any]],
        *,
        finish_reason: str | None = "stop",
        usage: tuple[int, int] | None = None,
    ) -> None:
        self._replies.append(_Stream(tuple(deltas), finish_reason, usage))

    def stream_then_hang(self, *pieces: str) -> None:
        """Stream these pieces, then nothing more until the client closes the response."""
        deltas = tuple({"content": p} for p in pieces)
        self._replies.append(_Stream(deltas, None, None, hang=True))

    def fail(self, status: int, message: str = "internal error") -> None:
        body = {"error": {"message": message, "type": "server_error", "code": None}}
        self._replies.append(_Status(status, body))

    def refuse_connection(self) -> None:
        self._replies.append(_Raise(lambda r: httpx.ConnectError("connection refused", request=r)))

    def time_out(self) -> None:
        self._replies.append(_Raise(lambda r: httpx.ReadTimeout("timed out", request=r)))

    # --- serving ------------------------------------------------------------------------------

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self._handle))

    @property
    def last_request(self) -> dict[str, Any]:
        assert self.requests, "no request reached the fake server"
        return self.requests[-1]

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or request.url.path != "/v1/chat/completions":
            return httpx.Response(404, json={"error": {"message": f"no route {request.url.path}"}})
        body = json.loads(request.content)
        self.requests.append(body)
        self.headers.append(request.headers)
        if not self._replies:
            return httpx.Response(500, json={"error": {"message": "no reply scripted"}})
        match self._replies.popleft():
            case _Raise(error=error):
                raise error(request)
            case _Status(status=status, body=error_body):
                return httpx.Response(status, json=error_body)
            case _Stream() as reply:
                include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
                events = _events(reply, body.get("model", MODEL), include_usage=include_usage)
                return httpx.Response(
                    200,
                    headers={"content-type": "text/event-stream"},
                    stream=_EventStream(self, events, hang=reply.hang),
                )

    def _closed(self) -> None:
        self.closed_streams += 1


def _chunk(model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    payload = {
        "id": "chatcmpl-fake",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": model,
        "choices": choices,
        **extra,
    }
    return f"data: {json.dumps(payload)}\n\n".encode()


def _events(reply: _Stream, model: str, *, include_usage: bool) -> list[bytes]:
    events = [
        _chunk(model, [{"index": 0, "delta": delta, "finish_reason": None}])
        for delta in reply.deltas
    ]
    if reply.hang:
        return events
    if reply.finish_reason is not None:
        events.append(
            _chunk(model, [{"index": 0, "delta": {}, "finish_reason": reply.finish_reason}])
        )
    if include_usage and reply.usage is not None:
        prompt, completion = reply.usage
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        events.append(_chunk(model, [], usage=usage))
    events.append(b"data: [DONE]\n\n")
    return events


class _EventStream(httpx.AsyncByteStream):
    """The response body; tells the server when the client closes it."""

    def __init__(self, server: FakeChatCompletionsServer, events: list[bytes], *, hang: bool):
        self._server = server
        self._events = events
        self._hang = hang
        self._closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event
        if self._hang:
            await asyncio.Event().wait()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._server._closed()
