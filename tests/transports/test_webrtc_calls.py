"""WebRTC calls against a real ``parley serve``: an aiortc caller speaks a real recording over
Opus/RTP and hears the reply; events travel on ``oai-events`` and validate against the SDK."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from parley.audio.files import read_audio
from tests.conftest import shared_words
from tests.server.conftest import Server, start_server, stop_server, validate, validator
from tests.transports.rtc_client import RtcCaller

LOOPBACK = ("--set", 'webrtc.host_addresses=["127.0.0.1"]', "--set", "webrtc.media_timeout_s=3")
TRANSCRIBED = {"type": "realtime", "audio": {"input": {"transcription": {"model": "whisper"}}}}
GA = validator(beta=False)


@pytest.fixture(scope="module")
def rtc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(
        tmp_path_factory.mktemp("rtc"), *LOOPBACK, env={"PARLEY_LLM_BASE_URL": ""}
    )
    yield server
    stop_server(server)


def _validated(caller: RtcCaller) -> list[dict[str, Any]]:
    """Every event the call sent, checked strictly against the SDK's GA server events
    (parley's own ``parley.*`` extensions aside)."""
    return [
        validate(GA, json.dumps(event))
        for _, event in caller.events
        if not event["type"].startswith("parley.")
    ]


async def test_call_hears_the_caller_and_speaks_the_reply(rtc_server: Server, clips) -> None:
    clip = clips["en_new_home_stars"]
    caller = RtcCaller(rtc_server.base_url)
    try:
        answer = await caller.connect(TRANSCRIBED)
        assert answer.status_code == 201, answer.text
        assert answer.headers["content-type"].startswith("application/sdp")
        assert answer.headers["location"] == f"/v1/realtime/calls/{caller.call_id}"
        assert "a=candidate:" in answer.text and "127.0.0.1" in answer.text
        created = await caller.until("session.created", 30)
        # The call's session configuration applies before session.created.
        assert created["session"]["audio"]["input"]["transcription"]["model"] == "whisper"
        caller.mic.say(read_audio(clip.path), then_silence_s=0.2)
        heard = await caller.until("conversation.item.input_audio_transcription.completed")
        # Through Opus and a weak recogniser (the fast profile's): some words of the clip.
        assert len(shared_words(heard["transcript"], clip.transcript)) >= 3, heard["transcript"]
        done = await caller.until("response.done")
        rid = done["response"]["id"]
        assert done["response"]["status"] == "completed"
        started = await caller.until("output_audio_buffer.started", response_id=rid)
        stopped = await caller.until("output_audio_buffer.stopped", 60, response_id=rid)
        timeline = await caller.until("parley.turn.timeline", response_id=rid)
        # Reply audio came as RTP, not as events, and the caller heard about as much as was said.
        assert not caller.of_type("response.output_audio.delta")
        voiced = caller.heard.audio(since=caller.arrival(started))
        level = np.sqrt(np.mean(voiced.samples.astype(np.float64) ** 2))
        assert level > 300, "the reply is silent"
        assert (
            caller.arrival(stopped) - caller.arrival(started) >= 0.8 * timeline["audio_ms"] / 1000
        )
        assert caller.mic.last_speech_sent is not None
        first = caller.heard.first_voiced_after(caller.mic.last_speech_sent)
        assert first is not None and first - caller.mic.last_speech_sent < 10
        _validated(caller)
    finally:
        await caller.close()


async def test_barge_in_truncates_the_reply_where_rtp_stopped(rtc_server: Server, clips) -> None:
    caller = RtcCaller(rtc_server.base_url)
    try:
        assert (await caller.connect(TRANSCRIBED)).status_code == 201
        await caller.until("session.created", 30)
        caller.mic.say(read_audio(clips["en_ldc93s1"].path), then_silence_s=0.2)
        started = await caller.until("output_audio_buffer.started", 60)
        rid = started["response_id"]
        await asyncio.sleep(1.5)  # the caller hears part of the reply, then talks over it
        caller.mic.say(read_audio(clips["en_cards_005"].path), then_silence_s=0.2)
        cleared = await caller.until("output_audio_buffer.cleared", 30, response_id=rid)
        # Generation may have finished before the cut (TTS runs ahead of playout): either way
        # the reply's item is truncated where its RTP stopped, and the caller is told so.
        done = await caller.until("response.done", 30)
        assert done["response"]["id"] == rid
        item_id = done["response"]["output"][0]["id"]
        truncated = await caller.until("conversation.item.truncated", 30, item_id=item_id)
        said = "".join(
            e["delta"]
            for e in caller.of_type("response.output_audio_transcript.delta")
            if e["response_id"] == rid
        )
        caller.send({"type": "conversation.item.retrieve", "item_id": item_id})
        item = (await caller.until("conversation.item.retrieved", 30))["item"]
        kept = item["content"][0]["transcript"]
        # What stays in the conversation is what went out as RTP before the cut: a beginning
        # of the reply, in proportion to the audio the caller received.
        assert kept and said.startswith(kept.rstrip(".")[: len(kept) // 2])
        assert len(kept.split()) < len(said.split())
        heard_s = caller.arrival(cleared) - caller.arrival(started)
        assert abs(truncated["audio_end_ms"] / 1000 - heard_s) < 0.5
        timeline = await caller.until("parley.turn.timeline", response_id=rid)
        share = len(kept.split()) / len(said.split())
        assert abs(share - heard_s / (timeline["audio_ms"] / 1000)) < 0.35
        _validated(caller)
    finally:
        await caller.close()


async def test_sdk_creates_a_call_and_hangs_it_up(rtc_server: Server) -> None:
    caller = RtcCaller(rtc_server.base_url)
    client = openai.AsyncOpenAI(base_url=rtc_server.base_url, api_key="unused")
    try:
        answer = await client.realtime.calls.with_raw_response.create(
            sdp=await caller.offer(), session={"type": "realtime", "instructions": "Be brief."}
        )
        assert answer.status_code == 201
        call_id = answer.headers["location"].rsplit("/", 1)[-1]
        from aiortc import RTCSessionDescription

        await caller.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        created = await caller.until("session.created", 30)
        assert created["session"]["instructions"] == "Be brief."
        await client.realtime.calls.hangup(call_id)
        for _ in range(100):
            if caller.channel.readyState == "closed":
                break
            await asyncio.sleep(0.1)
        assert caller.channel.readyState == "closed"
        with pytest.raises(openai.NotFoundError):
            await client.realtime.calls.hangup(call_id)
    finally:
        await client.close()
        await caller.close()


async def test_side_websocket_joins_the_call(rtc_server: Server) -> None:
    """A server-side WebSocket (?call_id=) sees the call's events and can drive it."""
    caller = RtcCaller(rtc_server.base_url)
    client = openai.AsyncOpenAI(base_url=rtc_server.base_url, api_key="unused")
    try:
        assert (await caller.connect()).status_code == 201
        await caller.until("session.created", 30)
        async with client.realtime.connect(call_id=caller.call_id) as side:
            first = await asyncio.wait_for(side.recv(), 10)
            assert first.type == "session.created"
            await side.session.update(session={"type": "realtime", "instructions": "Hi."})
            await side.conversation.item.create(
                item={
                    "type": "message",
                    "role": "user",
                    "content": [{"type": "input_text", "text": "What is parley?"}],
                }
            )
            await side.response.create()
            seen = []
            async with asyncio.timeout(60):
                async for event in side:
                    seen.append(event.type)
                    if event.type == "response.done":
                        break
            assert "session.updated" in seen and "response.created" in seen
        # The browser's data channel saw the same response, and its audio started as RTP.
        done = await caller.until("response.done", 30)
        await caller.until("output_audio_buffer.started", 30, response_id=done["response"]["id"])
        # The side socket leaving ends nothing: the call goes on.
        caller.send({"type": "response.create", "response": {"output_modalities": ["text"]}})
        assert (await caller.until("response.created", 30))["response"]["id"]
        # Another tenant's call, or none, is not found.
        async with httpx.AsyncClient() as http:
            gone = await http.post(f"{rtc_server.base_url}/realtime/calls/rtc_nope/hangup")
        assert gone.status_code == 404 and gone.json()["error"]["param"] == "call_id"
    finally:
        await client.close()
        await caller.close()


@pytest.mark.parametrize(
    ("body", "headers", "status", "param"),
    [
        (b"v=0 not sdp", {"content-type": "application/sdp"}, 400, "sdp"),
        (b"{}", {"content-type": "application/json"}, 400, "sdp"),
        (b"\xff\xfe", {"content-type": "application/sdp"}, 400, "sdp"),
        (b"x" * 200_000, {"content-type": "application/sdp"}, 413, None),
    ],
)
def test_bad_offers_get_clear_errors(
    rtc_server: Server, body: bytes, headers: dict[str, str], status: int, param: str | None
) -> None:
    r = httpx.post(f"{rtc_server.base_url}/realtime/calls", content=body, headers=headers)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert httpx.get(f"http://127.0.0.1:{rtc_server.port}/healthz").json()["sessions"] == 0


async def test_offers_without_audio_or_with_a_bad_session_are_refused(rtc_server: Server) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection

    data_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    data_only.createDataChannel("oai-events")
    await data_only.setLocalDescription(await data_only.createOffer())
    caller = RtcCaller(rtc_server.base_url)
    try:
        async with httpx.AsyncClient() as http:
            url = f"{rtc_server.base_url}/realtime/calls"
            r = await http.post(url, files={"sdp": (None, data_only.localDescription.sdp)})
            assert r.status_code == 400 and r.json()["error"]["param"] == "sdp"
            assert "audio" in r.json()["error"]["message"]
            offer = await caller.offer()
            r = await http.post(url, files={"sdp": (None, offer), "session": (None, "{nope")})
            assert r.status_code == 400 and r.json()["error"]["param"] == "session"
            bad_voice = {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}
            r = await http.post(
                url, files={"sdp": (None, offer), "session": (None, json.dumps(bad_voice))}
            )
            assert r.status_code == 400
            assert r.json()["error"]["param"] == "session.audio.output.voice"
            r = await http.post(url, files={"session": (None, "{}")})
            assert r.status_code == 400 and r.json()["error"]["param"] == "sdp"
    finally:
        await data_only.close()
        await caller.close()


VANISHING_CALLER = """
import asyncio, os, sys
sys.path.insert(0, {root!r})
from tests.transports.rtc_client import RtcCaller

async def main():
    caller = RtcCaller({base!r})
    answer = await caller.connect()
    assert answer.status_code == 201, answer.text
    await caller.until("session.created", 30)
    print(caller.call_id, flush=True)
    await asyncio.sleep(3600)

asyncio.run(main())
"""


def test_a_caller_that_vanishes_ends_its_call(rtc_server: Server) -> None:
    """kill -9 of the caller: no BYE, no DTLS close; the media timeout ends the call."""
    root = str(Path(__file__).resolve().parents[2])
    script = VANISHING_CALLER.format(root=root, base=rtc_server.base_url)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        call_id = proc.stdout.readline().strip()
        assert call_id.startswith("rtc_")
        health = f"http://127.0.0.1:{rtc_server.port}/healthz"
        assert httpx.get(health).json()["sessions"] == 1
        proc.kill()
        deadline = time.monotonic() + 30
        while httpx.get(health).json()["sessions"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert httpx.get(health).json()["sessions"] == 0
        r = httpx.post(f"{rtc_server.base_url}/realtime/calls/{call_id}/hangup")
        assert r.status_code == 404
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
