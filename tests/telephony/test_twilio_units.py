"""Twilio's parts in-process: the message parser, the player's marks, clears and playout
estimate (on a fake clock), and the two routes' signatures and TwiML (Starlette's TestClient)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse

from parley.audio.frames import Frame
from parley.audio.g711 import ulaw_decode
from parley.config import Settings
from parley.server.state import AppState
from parley.server.twilio import twilio_routes
from parley.transports import twilio as tw
from parley.transports.twilio import TwilioPlayer, TwilioProtocolError, parse
from parley.transports.wire import WireClosed
from tests.fakes.engines import fake_engines
from tests.telephony.twilio_caller import parse_twiml, signed

TOKEN = "unit-test-token"


def _tone(ms: int, rate: int = 8000) -> Frame:
    t = np.arange(rate * ms // 1000) / rate
    return Frame((8000 * np.sin(2 * np.pi * 440 * t)).astype(np.int16), rate)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """A player whose messages are kept, on a fake clock."""

    def __init__(self, **kw: Any) -> None:
        self.clock = Clock()
        self.events: list[dict[str, Any]] = []
        self.sent: list[dict[str, Any]] = []
        self.player = TwilioPlayer("MZtest", emit=self.events.append, clock=self.clock, **kw)

    async def flush(self) -> None:
        """Let the player send all it has queued (the socket "closes" once it is empty)."""

        async def send(text: str) -> None:
            self.sent.append(json.loads(text))
            if not self.player._queue:
                raise WireClosed

        if self.player._queue:
            await self.player.run(send)

    def marks(self) -> list[str]:
        return [m["mark"]["name"] for m in self.sent if m["event"] == "mark"]


async def test_reply_audio_goes_out_as_mulaw_media_with_a_mark_at_least_every_200_ms() -> None:
    h = Harness()
    assert h.player.played_ms("resp_1") is None
    h.player.play("resp_1", _tone(1000))
    h.player.play("resp_1", _tone(20))  # tiny chunks share a mark
    h.player.play("resp_1", _tone(20))
    h.player.play("resp_1", _tone(20, 24000))  # another rate is resampled to 8 kHz
    h.player.finish("resp_1")
    await h.flush()
    assert all(m["streamSid"] == "MZtest" for m in h.sent)
    kinds = [m["event"] for m in h.sent]
    assert kinds == ["media", "mark"] * 5 + ["media", "media", "media", "mark"]
    payloads = [base64.b64decode(m["media"]["payload"]) for m in h.sent if m["event"] == "media"]
    assert [len(p) for p in payloads[:5]] == [1600] * 5  # 200 ms of mu-law each
    assert sum(len(p) for p in payloads) == pytest.approx(8000 + 3 * 160, abs=40)
    assert np.abs(ulaw_decode(payloads[0])).max() > 7000
    assert [e["type"] for e in h.events] == ["output_audio_buffer.started"]
    for name in h.marks():
        h.clock.now += 0.2
        h.player.on_mark(name)
    assert h.player.played_ms("resp_1") == pytest.approx(1060, abs=5)
    assert [e["type"] for e in h.events][-1] == "output_audio_buffer.stopped"


async def test_playout_follows_the_echoed_marks_between_them_in_real_time() -> None:
    h = Harness()
    h.player.play("resp_1", _tone(600))  # stretches end at 200, 400 and 600 ms
    assert h.player.played_ms("resp_1") == 0.0  # nothing sent yet
    await h.flush()
    marks = h.marks()
    h.clock.now += 0.05
    assert h.player.played_ms("resp_1") == pytest.approx(50)
    h.clock.now += 0.5  # Twilio has not said the first mark was played: never past it
    assert h.player.played_ms("resp_1") == 200.0
    h.player.on_mark(marks[0])
    assert h.player.played_ms("resp_1") == 200.0
    h.clock.now += 0.1
    assert h.player.played_ms("resp_1") == pytest.approx(300)
    h.player.on_mark(marks[2])  # an earlier mark lost: the later one covers it
    assert h.player.played_ms("resp_1") == 600.0
    h.player.on_mark(marks[1])  # (a late echo changes nothing)
    assert h.player.played_ms("resp_1") == 600.0


async def test_a_clear_drops_the_reply_and_marks_echoed_after_it_were_not_heard() -> None:
    h = Harness()
    h.player.play("resp_1", _tone(1000))
    await h.flush()
    h.player.play("resp_1", _tone(400))  # still queued when the caller talks over it
    marks = h.marks()
    h.player.on_mark(marks[0])
    h.clock.now += 0.08
    h.player.clear("resp_1")
    assert h.player.played_ms("resp_1") == pytest.approx(280)
    await h.flush()
    # clear goes out before anything else; the queued audio never does
    assert h.sent[-1] == {"event": "clear", "streamSid": "MZtest"}
    assert sum(1 for m in h.sent if m["event"] == "media") == 5
    for name in marks[1:]:  # Twilio echoes the pending marks: none of them was played
        h.player.on_mark(name)
    h.clock.now += 1
    assert h.player.played_ms("resp_1") == pytest.approx(280)
    assert [e["type"] for e in h.events] == [
        "output_audio_buffer.started",
        "output_audio_buffer.cleared",
    ]
    # A reply cut before any of it went out needs no clear.
    h.player.play("resp_2", _tone(100))
    h.player.clear("resp_2")
    await h.flush()
    assert h.sent[-1]["event"] == "clear" and len(h.events) == 2
    h.player.play("resp_2", _tone(100))  # a cleared reply stays silent
    assert not h.player._queue


async def test_a_socket_that_stops_taking_audio_ends_the_call(monkeypatch) -> None:
    ended: list[bool] = []
    monkeypatch.setattr(tw, "MAX_QUEUED_BYTES", 50_000)
    h = Harness(on_overflow=lambda: ended.append(True))
    h.player.play("resp_1", _tone(10_000))  # ~107 kB of messages, none sent
    assert ended == [True] and not h.player._queue


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[1]",
        '{"event": "media"}',
        '{"event": "media", "media": {"payload": "***"}}',
        '{"event": "dtmf", "dtmf": {"digit": "x"}}',
        '{"event": "start", "start": {"callSid": 5}}',
        '{"event": "mark", "mark": "name"}',
        "x" * 70_000,
    ],
)
def test_what_twilio_would_never_send_is_refused(raw: str) -> None:
    with pytest.raises(TwilioProtocolError):
        parse(raw)


def test_twilio_messages_parse() -> None:
    start = parse(
        json.dumps(
            {
                "event": "start",
                "sequenceNumber": "1",
                "start": {
                    "accountSid": "AC1",
                    "streamSid": "MZ1",
                    "callSid": "CA1",
                    "tracks": ["inbound"],
                    "customParameters": {"profile": "default"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
                },
                "streamSid": "MZ1",
            }
        )
    )
    assert start == tw.Start(
        "MZ1", "CA1", "AC1", ("inbound",), {"profile": "default"}, "audio/x-mulaw", 8000, 1
    )
    media = parse(
        '{"event": "media", "streamSid": "MZ1", "media": {"track": "inbound", "payload": "//8="}}'
    )
    assert media == tw.Media("MZ1", "inbound", b"\xff\xff")
    assert parse('{"event": "dtmf", "streamSid": "MZ1", "dtmf": {"digit": "#"}}') == tw.Dtmf(
        "MZ1", "#"
    )
    assert parse('{"event": "stop", "streamSid": "MZ1", "stop": {}}') == tw.Stop("MZ1")
    assert parse('{"event": "something-new"}') is None


# --- the routes -------------------------------------------------------------------------------


def _client(**telephony: Any) -> Iterator[TestClient]:
    settings = Settings.model_validate({"telephony": telephony})
    state = AppState(settings, fake_engines()[0], None, None)
    with TestClient(Starlette(routes=twilio_routes(state))) as client:
        yield client


@pytest.fixture
def unset() -> Iterator[TestClient]:
    yield from _client()


@pytest.fixture
def public() -> Iterator[TestClient]:
    yield from _client(
        twilio_auth_token=TOKEN,
        public_url="https://voice.example.com/",
        profiles={"+1 555 010 0": {"session": {"instructions": "Hi."}}},
    )


VOICE = "/v1/telephony/twilio/voice"
MEDIA = "/v1/telephony/twilio/media"
FORM = {"CallSid": "CA1", "AccountSid": "AC1", "From": "+15557770000", "To": "+15550100"}


def test_without_an_auth_token_twilio_is_refused(unset: TestClient) -> None:
    answer = unset.post(VOICE, data=FORM, headers={"X-Twilio-Signature": "x"})
    assert answer.status_code == 403
    assert "twilio_auth_token" in answer.json()["error"]["message"]
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        unset.websocket_connect(MEDIA, headers={"X-Twilio-Signature": "x"}),
    ):
        pass
    assert denied.value.status_code == 403


def test_behind_a_public_url_twilio_signs_and_streams_there(public: TestClient) -> None:
    url = "https://voice.example.com" + VOICE
    assert (
        public.post(
            VOICE,
            data=FORM,
            headers={"X-Twilio-Signature": signed(TOKEN, "http://testserver" + VOICE, FORM)},
        ).status_code
        == 403
    )
    answer = public.post(VOICE, data=FORM, headers={"X-Twilio-Signature": signed(TOKEN, url, FORM)})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith(
        "application/xml"
    )
    twiml = parse_twiml(answer.text)
    assert twiml.stream_url == "wss://voice.example.com" + MEDIA
    assert twiml.action == url + "?parley=ended"
    assert twiml.parameters["profile"] == "+1 555 010 0"  # the called number's, in E.164
    # A GET webhook is signed over its query.
    query = "?CallSid=CA2&To=%2B15550111"
    answer = public.get(VOICE + query, headers={"X-Twilio-Signature": signed(TOKEN, url + query)})
    assert answer.status_code == 200
    assert parse_twiml(answer.text).parameters["profile"] == ""
    # The stream's upgrade is checked against the public wss URL too.
    with (
        pytest.raises(WebSocketDenialResponse),
        public.websocket_connect(
            MEDIA, headers={"X-Twilio-Signature": signed(TOKEN, "ws://testserver" + MEDIA)}
        ),
    ):
        pass
    # Once a stream closes, a call with nowhere to go is hung up.
    after = {"CallSid": "CA1", "CallStatus": "in-progress"}
    ended = public.post(
        VOICE + "?parley=ended",
        data=after,
        headers={"X-Twilio-Signature": signed(TOKEN, twiml.action or "", after)},
    )
    assert ended.status_code == 200 and "<Hangup />" in ended.text
