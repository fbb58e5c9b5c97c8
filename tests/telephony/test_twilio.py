"""Twilio Media Streams against a real ``parley serve`` (auth on): a caller plays Twilio's side
with a real 8 kHz recording (mu-law, 20 ms, real time), hears the reply, talks over it,
presses keys and hangs up; a WebSocket with a key of the telephony tenant sits beside the call
(``/v1/realtime?call_id=<CallSid>``) to see the session's events."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from parley.audio.files import read_audio
from parley.server.twilio import stream_token
from tests.conftest import shared_words
from tests.fakes.llm_http import FakeLLMServer
from tests.server.conftest import ROOT, Server, start_server, stop_server
from tests.telephony.twilio_caller import TwilioCaller, parse_twiml, signed

TOKEN = "twilio-auth-token-for-tests"
SLOW = "+15550199"  # its profile asks the scripted LLM for a long reply
PROFILES = {SLOW: {"session": {"instructions": "SLOW"}}, "default": {"session": {}}}
DTMF_PAUSE_S = 0.8


@dataclass
class TwilioServer:
    server: Server
    key: str  # of the telephony tenant
    llm: FakeLLMServer

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server.port}"


def _new_key(db: Path, tenant: str) -> str:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "parley.cli", "keys", "create", "--tenant", tenant),
            *("--set", f"server.database={db}"),
            *("--set", f"trust.audit_key_file={db.parent / 'audit.key'}"),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def twilio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TwilioServer]:
    tmp = tmp_path_factory.mktemp("twilio")
    key = _new_key(tmp / "parley.db", "telephony")
    with FakeLLMServer() as llm:
        server = start_server(
            tmp,
            *("--set", f"telephony.twilio_auth_token={TOKEN}"),
            *("--set", f"telephony.profiles={json.dumps(PROFILES)}"),
            *("--set", f"telephony.dtmf_response_ms={int(DTMF_PAUSE_S * 1000)}"),
            *("--set", "telephony.hangup_digit=#"),
            *("--set", 'telephony.transfer={"0": "tel:+15550123"}'),
            auth=True,
            env={"PARLEY_LLM_BASE_URL": llm.base_url, "PARLEY_LLM_MODEL": "fake"},
        )
        try:
            yield TwilioServer(server, key, llm)
        finally:
            stop_server(server)


class Side:
    """A WebSocket beside the call, collecting the session's events."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        async for raw in self.ws:
            self.events.append((time.monotonic(), json.loads(raw)))
            self._changed.set()

    async def until(self, kind: str, wait_s: float = 30, **fields: Any) -> tuple[float, dict]:
        """The first event of type ``kind`` with ``fields`` (``response_id`` matches a
        ``response.*`` event's response too)."""
        async with asyncio.timeout(wait_s):
            while True:
                for at, event in self.events:
                    if event["type"] == kind and all(
                        event.get(k, (event.get("response") or {}).get("id")) == v
                        if k == "response_id"
                        else event.get(k) == v
                        for k, v in fields.items()
                    ):
                        return at, event
                self._changed.clear()
                await self._changed.wait()

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for _, e in self.events if e["type"] == kind]

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(json.dumps(event))


@asynccontextmanager
async def side_socket(t: TwilioServer, call_sid: str) -> AsyncIterator[Side]:
    """``/v1/realtime?call_id=`` with a key of the telephony tenant, once the call is up."""
    url = f"ws://127.0.0.1:{t.server.port}/v1/realtime?call_id={call_sid}"
    headers = {"Authorization": f"Bearer {t.key}"}
    async with asyncio.timeout(20):
        while True:
            try:
                ws = await connect(url, additional_headers=headers, max_size=None)
                break
            except InvalidStatus as exc:  # 404 until the stream's start is through
                assert exc.response.status_code == 404
                await asyncio.sleep(0.05)
    side = Side(ws)
    try:
        await side.until("session.created", 10)
        yield side
    finally:
        side._task.cancel()
        await ws.close()


@asynccontextmanager
async def call(t: TwilioServer, **kw: Any) -> AsyncIterator[TwilioCaller]:
    caller = TwilioCaller(t.base, TOKEN, **kw)
    try:
        await caller.dial()
        yield caller
    finally:
        await caller.close()


def _level(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0


async def test_the_reply_arrives_as_mulaw_media_with_marks(twilio: TwilioServer, clips) -> None:
    clip = clips["en_ldc93s1_8k"]
    async with call(twilio) as caller, side_socket(twilio, caller.call_sid) as side:
        assert caller.twiml is not None
        assert (
            caller.twiml.stream_url
            == f"ws://127.0.0.1:{twilio.server.port}/v1/telephony/twilio/media"
        )
        assert caller.twiml.action == f"{twilio.base}/v1/telephony/twilio/voice?parley=ended"
        params = caller.twiml.parameters
        assert params["profile"] == "default" and params["tenant"] == "telephony"
        assert params["called"] == caller.to and params["caller"] == caller.caller
        caller.say(read_audio(clip.path), then_silence_s=0.3)
        _, started = await side.until("output_audio_buffer.started", 60)
        rid = started["response_id"]
        await side.until("output_audio_buffer.stopped", 60, response_id=rid)
        _, done = await side.until("response.done", 10, response_id=rid)
        assert done["response"]["status"] == "completed"
        # The reply came as media, not as audio events, and was played to its end.
        assert not side.of("response.output_audio.delta")
        media, marks = caller.of("media"), caller.of("mark")
        assert media and marks and caller.received_ms > 500
        assert all(len(m["media"]["payload"]) <= 4 * 1600 // 3 + 4 for m in media)  # <= 200 ms
        # A mark at least every second of reply audio, the last one at its very end; each
        # echoed as played, none flushed.
        positions = sorted(e.position_ms for e in caller.echoes)
        assert len(caller.echoes) == len(marks) and not any(e.cleared for e in caller.echoes)
        assert positions[-1] == caller.received_ms
        assert max(np.diff([0.0, *positions])) <= 1000
        assert _level(caller.heard_since(0)) > 300, "the reply is silent"
        # The scripted LLM heard some of the clip through mu-law and the recogniser.
        said = next(
            m for m in reversed(twilio.llm.requests[-1]["messages"]) if m["role"] == "user"
        )["content"]
        assert shared_words(str(said), clip.transcript), said
        assert caller.last_speech_sent is not None
        gap = caller.first_media_after(caller.last_speech_sent)
        assert gap is not None and gap - caller.last_speech_sent < 10


async def test_talking_over_the_reply_clears_it_and_truncates_to_the_marks(
    twilio: TwilioServer, clips
) -> None:
    # Twilio plays 0.4 s behind what it receives, and parley sends faster than real time: what
    # was sent is well ahead of what was heard, and only the marks tell the latter.
    async with (
        call(twilio, to=SLOW, playout_delay_s=0.4) as caller,
        side_socket(twilio, caller.call_sid) as side,
    ):
        caller.say(read_audio(clips["en_ldc93s1_8k"].path), then_silence_s=0.2)
        _, started = await side.until("output_audio_buffer.started", 60)
        rid = started["response_id"]
        await caller.wait(lambda: caller.played_ms >= 2000, 60)
        barge = time.monotonic()
        caller.say(read_audio(clips["en_cards_005"].path), then_silence_s=0.3)
        await caller.wait(lambda: bool(caller.clears), 30)
        cleared_at = caller.clears[0]
        assert cleared_at - barge < 5
        await side.until("output_audio_buffer.cleared", 10, response_id=rid)
        _, done = await side.until("response.done", 30, response_id=rid)
        item_id = done["response"]["output"][0]["id"]
        _, truncated = await side.until("conversation.item.truncated", 30, item_id=item_id)
        end_ms = truncated["audio_end_ms"]
        heard_ms = caller.heard_by_marks(cleared_at)
        sent_ms = max(
            p + 1000 * len(c) / 8000 for at, p, c in caller.media_arrivals if at < cleared_at
        )
        # Cut where the marks said playout stood (within one 200 ms stretch), not where the
        # sending stood; the marks pending at the clear came back flushed.
        assert abs(end_ms - heard_ms) <= 300, (end_ms, heard_ms, sent_ms)
        assert end_ms < sent_ms - 300, (end_ms, sent_ms)
        assert any(e.cleared for e in caller.echoes)
        # What stays in the conversation is the beginning of the reply that was heard.
        said = "".join(
            e["delta"]
            for e in side.of("response.output_audio_transcript.delta")
            if e["response_id"] == rid
        )
        await side.send({"type": "conversation.item.retrieve", "item_id": item_id})
        _, retrieved = await side.until("conversation.item.retrieved", 30)
        kept = retrieved["item"]["content"][0]["transcript"]
        assert kept and said.startswith(kept.rstrip(" ,.")), (kept, said[:200])
        words = len(kept.split())
        assert words < len(said.split())
        # "wordN," takes espeak 0.3-1.5 s: the words kept fit the audio heard.
        assert end_ms / 1500 - 1 <= words <= end_ms / 300 + 1, (words, end_ms)


async def test_a_keypad_press_reaches_the_llm_and_gets_a_reply(twilio: TwilioServer) -> None:
    async with call(twilio) as caller, side_socket(twilio, caller.call_sid) as side:
        before = len(twilio.llm.requests)
        pressed = time.monotonic()
        await caller.press("5")
        _, dtmf = await side.until("input_audio_buffer.dtmf_event_received", 10)
        assert dtmf["event"] == "5"
        # A press with nothing said around it is answered after the pause.
        created_at, created = await side.until("response.created", 30)
        assert created_at - pressed >= DTMF_PAUSE_S - 0.1
        await caller.wait(lambda: caller.first_media_after(pressed) is not None, 30)
        request = twilio.llm.requests[before]
        user = [m for m in request["messages"] if m["role"] == "user"]
        assert "The caller pressed 5." in json.dumps(user[-1]["content"])
        await side.until("output_audio_buffer.stopped", 60, response_id=created["response"]["id"])
        assert _level(caller.heard_since(pressed)) > 300


async def _after_stream(t: TwilioServer, caller: TwilioCaller) -> str:
    """What Twilio is told once the stream closed (the <Connect>'s action URL)."""
    assert caller.twiml is not None and caller.twiml.action is not None
    url = caller.twiml.action
    params = {
        "CallSid": caller.call_sid,
        "AccountSid": caller.account_sid,
        "CallStatus": "in-progress",
    }
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            url, data=params, headers={"X-Twilio-Signature": signed(TOKEN, url, params)}
        )
    assert answer.status_code == 200, answer.text
    return answer.text


async def test_keys_hang_up_or_transfer_and_the_api_can_refer(twilio: TwilioServer) -> None:
    async with call(twilio) as caller:
        await caller.press("#")
        await caller.wait(lambda: caller.closed_at is not None, 10)
        assert "<Hangup />" in await _after_stream(twilio, caller)
    async with call(twilio) as caller:
        await caller.press("0")
        await caller.wait(lambda: caller.closed_at is not None, 10)
        assert "<Dial><Number>+15550123</Number></Dial>" in await _after_stream(twilio, caller)
    async with call(twilio) as caller, side_socket(twilio, caller.call_sid):
        calls = f"{twilio.server.base_url}/realtime/calls/{caller.call_sid}"
        auth = {"Authorization": f"Bearer {twilio.key}"}
        async with httpx.AsyncClient() as http:
            accept = await http.post(f"{calls}/accept", json={"type": "realtime"}, headers=auth)
            assert accept.status_code == 400
            refer = await http.post(
                f"{calls}/refer", json={"target_uri": "sip:desk@example.com"}, headers=auth
            )
            assert refer.status_code == 200, refer.text
        await caller.wait(lambda: caller.closed_at is not None, 10)
        assert "<Sip>sip:desk@example.com</Sip>" in await _after_stream(twilio, caller)


async def test_stop_closes_the_socket_and_ends_the_call(twilio: TwilioServer) -> None:
    calls = f"{twilio.server.base_url}/realtime/calls"
    auth = {"Authorization": f"Bearer {twilio.key}"}
    async with call(twilio) as caller, side_socket(twilio, caller.call_sid) as side:
        assert await caller.stop() < 3
        assert caller.close_code == 1000
        await asyncio.wait_for(side._task, 10)  # the side socket is closed as the session ends
    async with httpx.AsyncClient() as http:
        gone = await http.post(f"{calls}/{caller.call_sid}/hangup", headers=auth)
        assert gone.status_code == 404
    # A socket that drops without a stop ends the call too.
    async with call(twilio) as caller, side_socket(twilio, caller.call_sid) as side:
        assert caller.ws is not None
        caller.ws.transport.abort()
        await asyncio.wait_for(side._task, 10)
    async with httpx.AsyncClient() as http:
        gone = await http.post(f"{calls}/{caller.call_sid}/hangup", headers=auth)
        assert gone.status_code == 404


async def test_a_bad_signature_is_refused(twilio: TwilioServer) -> None:
    caller = TwilioCaller(twilio.base, TOKEN)
    for signature in ("", "bm90IGEgc2lnbmF0dXJl", signed("another-token", twilio.base)):
        refused = await caller.webhook(signature=signature)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["type"] == "invalid_request_error"
    answer = await caller.webhook()
    assert answer.status_code == 200
    twiml = parse_twiml(answer.text)
    # The media stream's upgrade is signed too (the wss URL, no parameters).
    for signature in (
        "",
        signed(TOKEN, twiml.stream_url + "x"),
        signed("another-token", twiml.stream_url),
    ):
        with pytest.raises(InvalidStatus) as upgrade:
            await connect(twiml.stream_url, additional_headers={"X-Twilio-Signature": signature})
        assert upgrade.value.response.status_code == 403
    # A rightly signed upgrade still needs the stream token of its webhook: a forged profile,
    # another call's token, or a stale one is closed before any session starts.
    good = twiml.parameters
    for bad in (
        {**good, "profile": SLOW},
        {**good, "parley_token": stream_token(TOKEN, "CAother", good["profile"])},
        {**good, "parley_token": stream_token(TOKEN, caller.call_sid, good["profile"], 1)},
        {k: v for k, v in good.items() if k != "parley_token"},
    ):
        forged = TwilioCaller(twilio.base, TOKEN)
        forged.call_sid = caller.call_sid
        try:
            await forged.dial(parameters=bad)
            await forged.wait(lambda f=forged: f.closed_at is not None, 10)  # type: ignore[misc]
            assert forged.close_code == 1008 and not forged.of("media")
        finally:
            await forged.close()
