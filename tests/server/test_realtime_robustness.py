"""Beta clients, bad input, isolation between sessions, and shutdown, against ``parley serve``."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
from pathlib import Path

import httpx
import pytest
import websockets

from parley.bench.clips import Clip
from tests.server.conftest import Server, start_server, stop_server
from tests.server.realtime_client import connect, decode_audio, speech_24k


async def test_realtime_beta_client(server: Server, clips: dict[str, Clip]) -> None:
    async with connect(server, beta=True, model="gpt-4o-realtime-preview") as c:
        session = c.events[0]["session"]
        assert session["input_audio_format"] == "pcm16"
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "modalities": ["text", "audio"],
                    "voice": "alloy",
                    "input_audio_format": "pcm16",
                    "output_audio_format": "pcm16",
                    "turn_detection": {"type": "server_vad", "silence_duration_ms": 400},
                },
            }
        )
        updated = (await c.until("session.updated"))["session"]
        assert updated["turn_detection"]["silence_duration_ms"] == 400
        await c.send(
            {
                "type": "conversation.item.create",
                "item": {
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "How do I start parley?"}],
                },
            }
        )
        assert (await c.until("conversation.item.created"))["item"]["role"] == "user"
        await c.send({"type": "response.create"})
        done = await c.until("response.done")
        assert done["response"]["status"] == "completed"
        assert len(decode_audio(c.events, "response.audio.delta")) > 12000
        assert c.of_type("response.audio_transcript.done")
        assert not [
            e
            for e in c.events
            if e["type"].startswith(("response.output_audio", "response.output_text"))
        ]
        await c.append(speech_24k(clips["en_goforward_raw"].path))
        done = await c.until("conversation.item.input_audio_transcription.completed")
        assert "forward" in done["transcript"]
        await c.until("response.done")


async def test_realtime_beta_subprotocol_is_accepted(server: Server) -> None:
    async with websockets.connect(
        server.ws_url + "?model=x", subprotocols=["realtime", "openai-beta.realtime-v1"]
    ) as ws:
        assert ws.subprotocol == "realtime"
        created = json.loads(await ws.recv())
        assert created["type"] == "session.created"
        assert "input_audio_format" in created["session"]  # beta shape


BAD_INPUTS = [
    ("{not json", "invalid_json", None),
    ("[1, 2]", "invalid_event", None),
    ('{"event_id": "e1"}', "invalid_event", None),
    ('{"type": "ping", "event_id": "e2"}', "invalid_value", "type"),
    (
        '{"type": "conversation.item.truncate", "item_id": "x", "content_index": 0, '
        '"audio_end_ms": "soon", "event_id": "e3"}',
        "invalid_type",
        "audio_end_ms",
    ),
    (
        '{"type": "input_audio_buffer.append", "audio": "%%%not base64%%%"}',
        "invalid_audio",
        "audio",
    ),
    ('{"type": "input_audio_buffer.append", "audio": "AAAA"}', "invalid_audio", "audio"),
    (
        '{"type": "conversation.item.truncate", "item_id": "item_nope", "content_index": 0, '
        '"audio_end_ms": 5}',
        "item_not_found",
        "item_id",
    ),
    ('{"type": "conversation.item.retrieve", "item_id": "item_nope"}', "item_not_found", "item_id"),
    ('{"type": "conversation.item.delete", "item_id": "item_nope"}', "item_not_found", "item_id"),
    ('{"type": "input_audio_buffer.commit"}', None, None),  # VAD on, nothing buffered
    (
        '{"type": "session.update", "session": {"type": "realtime", "audio": {"input": '
        '{"format": {"type": "audio/flac"}}}}}',
        "invalid_value",
        None,
    ),
]


async def test_realtime_bad_input_gets_error_events_and_session_goes_on(server: Server) -> None:
    async with connect(server) as c:
        for raw, code, param in BAD_INPUTS:
            await c.send_raw(raw)
            error = await c.until("error")
            if code is not None:
                assert error["error"]["code"] == code, (raw, error)
            if param is not None:
                assert error["error"]["param"] == param, (raw, error)
            assert error["error"]["type"] == "invalid_request_error"
            assert "\n" not in error["error"]["message"]
            if '"event_id": "e' in raw:
                assert error["error"]["event_id"] == json.loads(raw)["event_id"]
        # A message over 15 MiB is refused, not fatal.
        huge = json.dumps({"type": "input_audio_buffer.append", "audio": "A" * (16 * 2**20)})
        await c.send_raw(huge)
        assert (await c.until("error"))["error"]["code"] == "message_too_large"
        # Binary frames are not events either.
        await c.send_raw(b"\x00\x01")
        await c.until("error")
        # And the session still works.
        await c.ask("hello")
        assert (await c.until("response.done"))["response"]["status"] == "completed"


async def test_realtime_sessions_are_isolated(server: Server, clips: dict[str, Clip]) -> None:
    """One client misbehaving and vanishing mid-reply does not disturb another."""

    async def rude() -> None:
        async with connect(server) as c:
            await c.send_raw("garbage")
            await c.ask("talk to me")
            await c.until("response.output_audio.delta")
            # leave without closing politely: drop the TCP connection mid-response
            c.conn._connection.transport.abort()

    async def polite() -> str:
        async with connect(server) as c:
            await c.append(speech_24k(clips["en_goforward_raw"].path), realtime=True)
            done = await c.until("conversation.item.input_audio_transcription.completed")
            await c.until("response.done")
            return str(done["transcript"])

    results = await asyncio.gather(rude(), polite(), return_exceptions=True)
    assert isinstance(results[1], str) and "forward" in results[1], results
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"http://127.0.0.1:{server.port}/healthz")).json()
    assert health["status"] == "ok"


def test_serve_shuts_down_cleanly_with_close_frames(tmp_path: Path) -> None:
    server = start_server(tmp_path)

    async def scenario() -> int | None:
        async with websockets.connect(server.ws_url + "?model=x") as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
            server.process.send_signal(signal.SIGTERM)
            try:
                while True:
                    await asyncio.wait_for(ws.recv(), 10)
            except websockets.ConnectionClosed as closed:
                return closed.rcvd.code if closed.rcvd else None

    try:
        code = asyncio.run(scenario())
        assert code in (1000, 1001, 1012)  # a close frame, not a dropped connection
        assert server.process.wait(timeout=15) == 0
    finally:
        stop_server(server)


def test_healthz(server: Server) -> None:
    health = httpx.get(f"http://127.0.0.1:{server.port}/healthz").json()
    assert health["engines"] == {
        "vad": "silero",
        "asr": "pocketsphinx",
        "llm": "faq",
        "tts": "espeak",
    }


@pytest.mark.parametrize("eagerness", ["low", "high"])
async def test_realtime_semantic_vad_eagerness_is_accepted(server: Server, eagerness: str) -> None:
    async with connect(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {
                            "turn_detection": {"type": "semantic_vad", "eagerness": eagerness}
                        }
                    },
                },
            }
        )
        td = (await c.until("session.updated"))["session"]["audio"]["input"]["turn_detection"]
        assert td["type"] == "semantic_vad" and td["eagerness"] == eagerness


async def test_realtime_idle_timeout_prompts_a_reply(
    server: Server, clips: dict[str, Clip]
) -> None:
    async with connect(server) as c:
        await c.send(
            {
                "type": "session.update",
                "session": {
                    "type": "realtime",
                    "audio": {
                        "input": {"turn_detection": {"type": "server_vad", "idle_timeout_ms": 1000}}
                    },
                },
            }
        )
        await c.until("session.updated")
        await c.ask("How do I start parley?")
        done = await c.until("response.done")
        audio_ms = len(decode_audio(c.events)) / 24
        silence = base64.b64encode(bytes(960)).decode()  # 20 ms at 24 kHz
        for _ in range(int((audio_ms + 1500) / 20)):
            await c.send({"type": "input_audio_buffer.append", "audio": silence})
        timeout = await c.until("input_audio_buffer.timeout_triggered")
        assert timeout["audio_end_ms"] >= audio_ms + 1000 - 40
        second = await c.until("response.done")
        assert second["response"]["id"] != done["response"]["id"]
