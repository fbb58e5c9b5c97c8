"""HTTP plumbing of the REST endpoints: bounded bodies and streams that close what they own.

A request is checked, and its engine started, before the response status is sent
(:func:`first_item`), so a bad voice, a failing engine or a spent budget is answered with a
status instead of a broken stream; :class:`Stream` closes its generator (and the job beneath it)
however the response ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Message as ASGIMessage
from starlette.types import Receive, Scope, Send

from parley.errors import ClientError, Code, PayloadTooLargeError

__all__ = [
    "SSE_HEADERS",
    "Stream",
    "Upload",
    "first_item",
    "limited",
    "read_upload",
    "resumed",
    "too_large",
]

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


@dataclass(frozen=True, slots=True)
class Upload:
    """A multipart body's one file and its text fields (in order, repeated names kept)."""

    name: str
    data: bytes
    fields: list[tuple[str, str]]


async def read_upload(
    request: Request,
    field: str,
    max_bytes: int,
    *,
    max_fields: int = 64,
    max_part_size: int = 256 * 1024,
) -> Upload:
    """The file ``field`` of a ``multipart/form-data`` body of at most ``max_bytes``, and its
    text fields. Every way it can be wrong is a ClientError about ``field`` (wrong content
    type, malformed multipart, no such file, a text field instead) or a 413."""
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise ClientError(
            f"Expected a multipart/form-data body with a {field!r} field.",
            param=field,
            code=Code.INVALID_CONTENT_TYPE,
        )
    try:
        form = await limited(request, max_bytes).form(
            max_files=1, max_fields=max_fields, max_part_size=max_part_size
        )
    except HTTPException as exc:  # malformed multipart
        raise ClientError(f"Invalid multipart body: {exc.detail}", param=field) from None
    try:
        file = form.get(field)
        if file is None:
            raise ClientError(
                f"Missing required parameter: {field!r}.",
                param=field,
                code=Code.MISSING_REQUIRED_PARAMETER,
            )
        if not isinstance(file, UploadFile):
            raise ClientError(
                f"{field!r} must be a file upload, not a text field.",
                param=field,
                code=Code.INVALID_TYPE,
            )
        fields = [(k, v) for k, v in form.multi_items() if isinstance(v, str)]
        return Upload(file.filename or field, await file.read(), fields)
    finally:
        await form.close()
