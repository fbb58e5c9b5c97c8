"""A test helper around the official SDK's Realtime connection: strict event checks, waits."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import numpy as np
import openai

from parley.audio.files import read_audio
from parley.audio.resample import resample
from tests.server.conftest import Server, validate, validator

PACKET = 480  # 20 ms at 24 kHz


class Client:
    def __init__(self, conn: Any, *, beta: bool = False) -> None:
        self.conn = conn
        self.adapter = validator(beta)
        self.events: list[dict[str, Any]] = []

    async def next(self, wait_s: float = 20) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv_bytes(), wait_s)
        event = validate(self.adapter, raw)
        self.events.append(event)
        return event

    async def until(self, kind: str, wait_s: float = 30) -> dict[str, Any]:
        """Read events until one of type ``kind``; every event on the way is validated."""
        async with asyncio.timeout(wait_s):
            while True:
                event = await self.next(wait_s)
                if event["type"] == kind:
                    return event
                if event["type"] == "error":
                    raise AssertionError(f"waiting for {kind}, got {event['error']}")

    async def send(self, event: dict[str, Any]) -> None:
        await self.conn.send(event)

    async def send_raw(self, data: str | bytes) -> None:
        await self.conn.send_raw(data)

    async def append(self, pcm: np.ndarray, *, realtime: bool = False) -> None:
        for i in range(0, len(pcm), PACKET):
            chunk = pcm[i : i + PACKET].astype("<i2").tobytes()
            await self.send(
                {"type": "input_audio_buffer.append", "audio": base64.b64encode(chunk).decode()}
            )
            if realtime:
                await asyncio.sleep(0.02)

    async def ask(self, text: str) -> None:
        """A user text message, then ``response.create``."""
        await self.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": text}],
                },
            }
        )
        await self.send({"type": "response.create"})

    async def start_slow_reply(self) -> dict[str, Any]:
        """Make the scripted LLM answer slowly and wait for the reply's first audio."""
        await self.send(
            {
                "type": "session.update",
                "session": {"type": "realtime", "instructions": "SLOW: at length."},
            }
        )
        await self.until("session.updated")
        await self.ask("Tell me everything.")
        return await self.until("response.output_audio.delta")

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]


def speech_24k(path: Any, *, trailing_silence_ms: int = 1000) -> np.ndarray:
    """A shared clip as 24 kHz pcm16 samples, with silence after it so the turn ends."""
    audio = resample(read_audio(path), 24000).samples
    return np.concatenate([audio, np.zeros(24 * trailing_silence_ms, np.int16)])


def decode_audio(
    events: list[dict[str, Any]], kind: str = "response.output_audio.delta"
) -> np.ndarray:
    chunks = [
        np.frombuffer(base64.b64decode(e["delta"]), "<i2") for e in events if e["type"] == kind
    ]
    return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)


@asynccontextmanager
async def connect(server: Server, *, beta: bool = False, **kw: Any) -> AsyncIterator[Client]:
    # The beta SDK always dials wss:// unless websocket_base_url says otherwise.
    sdk = openai.AsyncOpenAI(
        base_url=server.base_url,
        api_key="unused-no-auth-yet",
        websocket_base_url=server.base_url.replace("http", "ws", 1),
    )
    realtime = sdk.beta.realtime if beta else sdk.realtime
    async with realtime.connect(model=kw.pop("model", "parley"), **kw) as conn:
        client = Client(conn, beta=beta)
        first = await client.next()
        assert first["type"] == "session.created"
        yield client
