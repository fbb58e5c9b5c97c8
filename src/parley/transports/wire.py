"""What carries a Realtime session's JSON events: a :class:`Wire` (a WebSocket, a WebRTC data
channel), and :class:`Media` where the session's audio travels apart from its events (RTP).

A wire only moves text; it holds no protocol state. The connection around the session reads
client messages from its wires and writes server events to them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Protocol

from starlette.websockets import WebSocket, WebSocketDisconnect

from parley.audio.frames import Frame

__all__ = ["Media", "NullWire", "WebSocketWire", "Wire", "WireClosed"]


class WireClosed(Exception):
    """The other side is gone: nothing more can be sent."""


class Wire(Protocol):
    async def receive(self) -> str | bytes | None:
        """The next client message; None once the other side has left."""

    async def send(self, text: str) -> None:
        """Send one server event; raises :class:`WireClosed` when the other side is gone."""

    async def close(self, code: int, reason: str) -> None:
        """End the conversation from this side (``code`` as a WebSocket close code)."""


class Media(Protocol):
    """Reply audio played out apart from the events (RTP): the transport knows, better than
    the input clock, how much of each reply the caller has been sent."""

    def play(self, response_id: str, frame: Frame) -> None:
        """Queue reply audio of ``response_id`` for playout."""

    def finish(self, response_id: str) -> None:
        """No more audio will come for ``response_id``."""

    def clear(self, response_id: str) -> None:
        """Drop what is still queued of ``response_id`` (barge-in)."""

    def played_ms(self, response_id: str) -> float | None:
        """Milliseconds of ``response_id``'s audio sent so far (None: unknown response)."""


class WebSocketWire:
    """A Starlette WebSocket as a wire."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws

    async def receive(self) -> str | bytes | None:
        try:
            message = await self.ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return None
        if message["type"] == "websocket.disconnect":
            return None
        raw: str | bytes | None = message.get("text")
        if raw is None:
            raw = message.get("bytes") or b""
        return raw

    async def send(self, text: str) -> None:
        try:
            await self.ws.send_text(text)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise WireClosed from exc

    async def close(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close(code=code, reason=reason[:120])


class NullWire:
    """A call with no client reading its events (a phone call): they go nowhere, unless a
    WebSocket attaches beside it; the session ends when the transport calls :meth:`end`."""

    def __init__(self) -> None:
        self._ended = asyncio.Event()

    def end(self) -> None:
        self._ended.set()

    async def receive(self) -> str | bytes | None:
        await self._ended.wait()
        return None

    async def send(self, text: str) -> None:
        if self._ended.is_set():
            raise WireClosed

    async def close(self, code: int, reason: str) -> None:
        self._ended.set()
