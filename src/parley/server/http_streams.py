"""HTTP plumbing of the REST endpoints: bounded bodies and streams that close what they own.

A request is checked, and its engine started, before the response status is sent
(:func:`first_item`), so a bad voice, a failing engine or a spent budget is answered with a
status instead of a broken stream; :class:`Stream` closes its generator (and the job beneath it)
however the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from typing import Any, TypeVar

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from parley.errors import PayloadTooLargeError

__all__ = ["SSE_HEADERS", "Stream", "first_item", "limited", "resumed", "too_large"]

_T = TypeVar("_T")


class Stream(StreamingResponse):
    """A streaming response that closes its generator however the response ends (Starlette
    leaves an abandoned generator to the garbage collector, and with it a TTS or LLM job), then
    ``owns``, the one beneath that holds the job, which a body never started cannot reach."""

    def __init__(
        self,
        body: AsyncGenerator[bytes, None],
        media_type: str,
        headers: dict[str, str],
        owns: AsyncGenerator[Any, None] | None = None,
    ) -> None:
        super().__init__(body, media_type=media_type, headers=headers)
        self._body = body
        self._owns = owns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self._body.aclose()
            finally:
                if self._owns is not None:
                    await self._owns.aclose()


SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def too_large(limit: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(f"Request body is larger than the limit of {limit} bytes.")


def limited(request: Request, limit: int) -> Request:
    """``request`` whose body stops being read past ``limit`` bytes (chunked uploads too), and
    is refused unread when its ``content-length`` says so."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise too_large(limit)
    size = 0

    async def receive() -> ASGIMessage:
        nonlocal size
        message = await request.receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise too_large(limit)
        return message

    return Request(request.scope, receive)


async def first_item(events: AsyncGenerator[_T, None]) -> _T | None:
    """The first item of ``events`` (None when it has none), closing it if that fails, so that
    a bad voice or a failing engine is answered with a status instead of a broken stream."""
    try:
        return await anext(events, None)
    except BaseException:
        await events.aclose()
        raise


async def resumed(first: _T | None, rest: AsyncGenerator[_T, None]) -> AsyncGenerator[_T, None]:
    """``first`` (what :func:`first_item` took) then the rest of its generator, which it closes."""
    async with aclosing(rest):
        if first is not None:
            yield first
            async for item in rest:
                yield item
