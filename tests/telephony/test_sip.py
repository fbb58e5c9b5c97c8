"""SIP calls against a real ``parley serve`` (auth on, ``telephony.sip_listen`` on loopback): a
real SIP phone (PJSIP's pjsua2 in a subprocess, :mod:`tests.telephony.sip_caller`) calls with
PCMU/PCMA RTP, speaks a real recording, records what it hears, presses keys (RFC 4733), holds,
is transferred (REFER) and hangs up. The application's side is the official ``openai`` SDK: a
loopback receiver verifies the ``realtime.call.incoming`` webhook (``webhooks.unwrap``), then
``realtime.calls.accept`` / ``reject`` / ``refer`` and ``realtime.connect(call_id=...)``."""

from __future__ import annotations

import asyncio
import datetime
import json
import queue
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import openai
import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from openai.types.webhooks import RealtimeCallIncomingWebhookEvent
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from parley.audio.frames import Frame
from parley.config import Settings
from parley.errors import ConfigError
from parley.server.sip import check_sip, incoming_event
from parley.transports import sip as sip_transport
from parley.transports.sip import SipUnavailable, incoming_of, parse_listen
from parley.transports.sip_media import FRAME, SipReply
from tests.conftest import shared_words
from tests.fakes.llm_http import FakeLLMServer, free_port
from tests.server.conftest import ROOT, Server, start_server, stop_server
from tests.telephony.sip_caller import SipPhone

pytest.importorskip("pjsua2")  # the 'sip' extra (GPL-2.0); the test extra has it

SECRET = "whsec_" + "c2lwLXdlYmhvb2stc2VjcmV0LWZvci10ZXN0cw=="  # base64 of a test secret
NUMBER = "+15550100"
RTP_TIMEOUT_S = 3
ACCEPT_TIMEOUT_S = 6
DTMF_PAUSE_S = 0.8


class Receiver:
    """The application's webhook endpoint on loopback: each ``realtime.call.incoming`` is
    verified with the SDK (``webhooks.unwrap``) and queued; anything unverifiable gets 400."""

    def __init__(self) -> None:
        self.port = free_port()
        self.client = openai.OpenAI(api_key="unused", webhook_secret=SECRET)
        self.events: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.refused: list[str] = []
        app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _hook(self, request: Request) -> Response:
        body = (await request.body()).decode()
        try:
            event = self.client.webhooks.unwrap(body, dict(request.headers))
        except Exception as exc:  # the SDK's InvalidWebhookSignatureError and friends
            self.refused.append(repr(exc))
            return Response(status_code=400)
        self.events.put((event, dict(request.headers)))
        return Response(status_code=200)

    async def next(self, wait_s: float = 20) -> tuple[Any, dict[str, str]]:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                return self.events.get_nowait()
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("no webhook came") from None
                await asyncio.sleep(0.02)

    def __enter__(self) -> Receiver:
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            assert time.monotonic() < deadline, "the webhook receiver did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(5)


@dataclass
class SipServer:
    server: Server
    sip_port: int
    key: str  # of the telephony tenant
    llm: FakeLLMServer
    receiver: Receiver | None
    desk_port: int  # the SIP port of the phone that "0" transfers to (sip:busy@...: 486)
    tls_port: int

    def uri(self, number: str = NUMBER, transport: str = "udp") -> str:
        port = self.tls_port if transport == "tls" else self.sip_port
        return f"sip:{number}@127.0.0.1:{port};transport={transport}"


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


def _certificate(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for SIP over TLS on loopback."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "sip.crt", tmp / "sip.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _sip_server(tmp: Path, llm: FakeLLMServer, receiver: Receiver | None, *extra: str) -> SipServer:
    key = _new_key(tmp / "parley.db", "telephony")
    sip_port, desk_port, tls_port = free_port(), free_port(), free_port()
    cert, cert_key = _certificate(tmp)
    hooks = ("--set", f"telephony.webhook_url={receiver.url}") if receiver else ()
    server = start_server(
        tmp,
        *("--set", f"telephony.sip_listen=127.0.0.1:{sip_port}"),
        *("--set", f"telephony.sip_tls_port={tls_port}"),
        *("--set", f"telephony.sip_tls_cert={cert}"),
        *("--set", f"telephony.sip_tls_key={cert_key}"),
        *hooks,
        *("--set", f"telephony.webhook_secret={SECRET}"),
        *("--set", f"telephony.accept_timeout_s={ACCEPT_TIMEOUT_S}"),
        *("--set", f"telephony.rtp_timeout_s={RTP_TIMEOUT_S}"),
        *("--set", f"telephony.dtmf_response_ms={int(DTMF_PAUSE_S * 1000)}"),
        *("--set", "telephony.hangup_digit=#"),
        *("--set", f'telephony.transfer={{"0": "sip:busy@127.0.0.1:{desk_port}"}}'),
        *extra,
        *("--log-level", "info"),
        auth=True,
        env={"PARLEY_LLM_BASE_URL": llm.base_url, "PARLEY_LLM_MODEL": "fake"},
    )
    return SipServer(server, sip_port, key, llm, receiver, desk_port, tls_port)


@pytest.fixture(scope="module")
def llm() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as fake:
        yield fake


@pytest.fixture(scope="module")
def sip(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer) -> Iterator[SipServer]:
    """A server whose calls ring until the application accepts them (webhook)."""
    with Receiver() as receiver:
        s = _sip_server(tmp_path_factory.mktemp("sip"), llm, receiver)
        try:
            yield s
        finally:
            stop_server(s.server)
    assert not receiver.refused, receiver.refused


@pytest.fixture(scope="module")
def sip_direct(tmp_path_factory: pytest.TempPathFactory, llm: FakeLLMServer) -> Iterator[SipServer]:
    """A server without a webhook: calls are answered at once with the number's profile."""
    # Whisper hears the 8 kHz caller well enough for its words to come back in the reply.
    s = _sip_server(tmp_path_factory.mktemp("sip-direct"), llm, None, "--set", "asr.engine=whisper")
    yield s
    stop_server(s.server)


@pytest.fixture
async def sdk(sip: SipServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The application's client: a key of the telephony tenant."""
    async with openai.AsyncOpenAI(api_key=sip.key, base_url=sip.server.base_url) as client:
        yield client


@asynccontextmanager
async def phone(port: int | None = None) -> AsyncIterator[SipPhone]:
    p = SipPhone(port or free_port())
    try:
        await p.start()
        yield p
    finally:
        await p.close()


async def ring(s: SipServer, p: SipPhone, **headers: str) -> str:
    """Call the server; the webhook arrives verified; its call id."""
    assert s.receiver is not None
    p.send("call", uri=s.uri(transport="tcp"), headers=headers)
    await p.until("state", state="EARLY", code=180, wait_s=20)
    event, _ = await s.receiver.next()
    return str(event.data.call_id)


class Side:
    """``client.realtime.connect(call_id=...)`` beside the call, collecting its events."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.closed = asyncio.Event()
        self._changed = asyncio.Event()
        self._task = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.connection:
                self.events.append((time.monotonic(), event.model_dump(exclude_unset=True)))
                self._changed.set()
        except Exception:  # the server closed the socket as the call ended
            pass
        finally:
            self.closed.set()
            self._changed.set()

    async def until(self, kind: str, wait_s: float = 30, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            while True:
                for _, event in self.events:
                    if event["type"] == kind and all(event.get(k) == v for k, v in fields.items()):
                        return event
                assert not self.closed.is_set(), f"the call ended before {kind}"
                self._changed.clear()
                await self._changed.wait()


@asynccontextmanager
async def side(sdk: openai.AsyncOpenAI, call_id: str) -> AsyncIterator[Side]:
    async with sdk.realtime.connect(call_id=call_id) as connection:
        watcher = Side(connection)
        await watcher.until("session.created", 15)
        yield watcher
        watcher._task.cancel()


async def transcribe(path: Path) -> str:
    """What the phone heard, in words (Whisper, as ``parley transcribe`` does)."""
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "parley.cli", "transcribe", "--profile", "neural", str(path)),
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return out.decode()


async def eventually(condition: Callable[[], bool], wait_s: float = 30) -> None:
    async with asyncio.timeout(wait_s):
        while not condition():  # noqa: ASYNC110 - the LLM double records from its own thread
            await asyncio.sleep(0.05)


async def hung_up(s: SipServer, call_id: str) -> int:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{s.server.base_url}/realtime/calls/{call_id}/hangup",
            headers={"Authorization": f"Bearer {s.key}"},
        )
    return answer.status_code


# --- without a webhook: answered at once ------------------------------------------------------


async def test_a_call_is_answered_and_hears_a_spoken_reply(
    sip_direct: SipServer, clips, tmp_path: Path
) -> None:
    clip = clips["en_ldc93s1_8k"]
    async with phone() as p:
        p.send("call", uri=sip_direct.uri(transport="tls"))  # SIP over TLS; RTP as ever
        await p.until("state", state="CONFIRMED", wait_s=20)
        media = await p.until("media", call="main", wait_s=5)
        assert media["status"] == 1  # active: the SDP offered PCMU/PCMA and got one
        p.send("say", path=str(clip.path))
        said = await p.until("said", wait_s=30)
        heard = await p.until("heard", wait_s=60)
        assert 0 < heard["at"] - said["at"] < 10
        await asyncio.sleep(4)  # the reply plays on
        p.send("save", path=str(tmp_path / "heard.wav"))
        await p.until("saved")
        p.send("bye")
        await p.until("state", state="DISCONNECTED", wait_s=10)
    # The scripted LLM heard some of the clip through G.711 and the recogniser, and its reply
    # ("You said: ...") came back as RTP that a recogniser can read.
    user = [m for m in sip_direct.llm.requests[-1]["messages"] if m["role"] == "user"]
    said_text = json.dumps(user[-1]["content"])
    assert len(shared_words(said_text, clip.transcript)) >= 3, said_text
    words = await transcribe(tmp_path / "heard.wav")
    assert len(shared_words(words, f"You said: {said_text}")) >= 3, (words, said_text)


# --- with the webhook: OpenAI's call-control API ----------------------------------------------


async def test_the_webhook_rings_until_the_sdk_accepts_then_attaches(
    sip: SipServer, sdk: openai.AsyncOpenAI, clips
) -> None:
    assert sip.receiver is not None
    async with phone() as p:
        p.send("call", uri=sip.uri(transport="tcp"), headers={"X-Customer-Id": "42"})
        await p.until("state", state="EARLY", code=180, wait_s=20)
        event, headers = await sip.receiver.next()
        # OpenAI's event, signed as Standard Webhooks (the SDK's unwrap verified it).
        assert event.type == "realtime.call.incoming" and event.object == "event"
        assert event.id.startswith("evt_") and abs(event.created_at - time.time()) < 60
        assert headers["webhook-id"].startswith("wh_") and headers["webhook-signature"]
        call_id = event.data.call_id
        assert call_id.startswith("rtc_")
        sip_headers = [(h.name, h.value) for h in event.data.sip_headers]
        names = [name.lower() for name, _ in sip_headers]
        assert ("X-Customer-Id", "42") in sip_headers
        assert {"from", "to", "call-id", "via"} <= set(names)
        assert "authorization" not in names
        assert NUMBER in dict(sip_headers)["To"]
        assert not p.of("state") or p.of("state")[-1]["state"] == "EARLY"  # still ringing
        # The application accepts with the SDK: 200 OK, and the session is configured so.
        await sdk.realtime.calls.accept(
            call_id, type="realtime", instructions="You answer the front desk."
        )
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            created = await watcher.until("session.created")
            session = created["session"]
            assert session["instructions"] == "You answer the front desk."
            assert session["audio"]["input"]["format"]["type"] == "audio/pcmu"
            assert session["audio"]["output"]["format"]["type"] == "audio/pcmu"
            p.send("say", path=str(clips["en_ldc93s1_8k"].path))
            await watcher.until("input_audio_buffer.speech_started")
            started = await watcher.until("output_audio_buffer.started")
            rid = started["response_id"]
            await p.until("heard", wait_s=30)
            await watcher.until("output_audio_buffer.stopped", response_id=rid)
            done = await watcher.until("response.done")
            assert done["response"]["status"] == "completed"
            # The reply went out as RTP, not as audio events.
            assert not [e for _, e in watcher.events if e["type"] == "response.output_audio.delta"]
            p.send("bye")
            await asyncio.wait_for(watcher.closed.wait(), 10)  # the session ended with the call
        assert await hung_up(sip, call_id) == 404


async def test_a_keypad_press_reaches_the_session_and_the_llm(
    sip: SipServer, sdk: openai.AsyncOpenAI
) -> None:
    async with phone() as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.accept(call_id, type="realtime")
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            before = len(sip.llm.requests)
            pressed = time.monotonic()
            p.send("dtmf", digits="5")  # RFC 4733
            dtmf = await watcher.until("input_audio_buffer.dtmf_event_received", 10)
            assert dtmf["event"] == "5"
            await watcher.until("response.created")
            assert time.monotonic() - pressed >= DTMF_PAUSE_S - 0.1
            await eventually(lambda: len(sip.llm.requests) > before)
            user = [m for m in sip.llm.requests[before]["messages"] if m["role"] == "user"]
            assert "The caller pressed 5." in json.dumps(user[-1]["content"])
            await watcher.until("output_audio_buffer.stopped", 60)
        # The hangup digit (telephony.hangup_digit) ends the call from parley's side.
        p.send("dtmf", digits="#")
        ended = await p.until("state", state="DISCONNECTED", wait_s=10)
        assert ended["code"] == 200
    assert await hung_up(sip, call_id) == 404


async def test_refer_transfers_the_call(sip: SipServer, sdk: openai.AsyncOpenAI) -> None:
    async with phone() as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.accept(call_id, type="realtime")
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            target = f"sip:agent@127.0.0.1:{p.port}"
            await sdk.realtime.calls.refer(call_id, target_uri=target)
            request = await p.until("transfer_request", wait_s=10)
            assert request["target"].strip("<>") == target
            # The phone calls the target (itself, here), which answers; parley hears of it
            # (NOTIFY 200) and leaves the call.
            await p.until("transfer_answered", wait_s=10)
            await p.until("state", call="main", state="DISCONNECTED", wait_s=15)
            await asyncio.wait_for(watcher.closed.wait(), 10)
        assert await hung_up(sip, call_id) == 404
    # A transfer digit (telephony.transfer) sends REFER too; a target that refuses (486)
    # leaves the call as it was.
    async with phone(sip.desk_port) as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.accept(call_id, type="realtime")
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            p.send("dtmf", digits="0")
            request = await p.until("transfer_request", wait_s=10)
            assert request["target"].strip("<>") == f"sip:busy@127.0.0.1:{sip.desk_port}"
            await p.until("transfer_refused", wait_s=10)
            await eventually(lambda: "the transfer failed: 486" in sip.server.log.read_text())
            assert not watcher.closed.is_set()
            main = [e["state"] for e in p.of("state") if e["call"] == "main"]
            assert main[-1] == "CONFIRMED"  # the call is still up
        assert await hung_up(sip, call_id) == 200
        await p.until("state", call="main", state="DISCONNECTED", wait_s=10)


async def test_reject_cancel_and_no_answer(sip: SipServer, sdk: openai.AsyncOpenAI) -> None:
    async with phone() as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.reject(call_id, status_code=486)
        refused = await p.until("state", state="DISCONNECTED", wait_s=10)
        assert refused["code"] == 486
        with pytest.raises(openai.NotFoundError):  # gone once refused
            await sdk.realtime.calls.accept(call_id, type="realtime")
    async with phone() as p:  # the caller gives up while it rings (CANCEL)
        call_id = await ring(sip, p)
        p.send("bye")
        await p.until("state", state="DISCONNECTED", wait_s=10)
        for _ in range(100):  # the server hears the CANCEL and forgets the call
            if await hung_up(sip, call_id) == 404:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the cancelled call is still there")
    async with phone() as p:  # nobody decides: refused after accept_timeout_s
        rang = time.monotonic()
        call_id = await ring(sip, p)
        timed_out = await p.until("state", state="DISCONNECTED", wait_s=ACCEPT_TIMEOUT_S + 10)
        assert timed_out["code"] == 480
        assert time.monotonic() - rang >= ACCEPT_TIMEOUT_S - 0.5


async def test_a_call_without_g711_is_refused(sip: SipServer) -> None:
    assert sip.receiver is not None
    async with phone() as p:
        p.send("call", uri=sip.uri(), codecs=["G722/16000/1", "speex/8000/1"])
        refused = await p.until("state", state="DISCONNECTED", wait_s=10)
        assert refused["code"] == 488  # Not Acceptable Here: PCMU or PCMA only
    await asyncio.sleep(0.5)
    assert sip.receiver.events.empty()  # it never rang


async def test_hold_pauses_the_call(sip: SipServer, sdk: openai.AsyncOpenAI, clips) -> None:
    clip = clips["en_ldc93s1_8k"]
    async with phone() as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.accept(call_id, type="realtime")
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            p.send("hold")  # re-INVITE, sendonly
            await p.until("media", status=2, wait_s=10)  # PJSUA_CALL_MEDIA_LOCAL_HOLD
            p.send("say", path=str(clip.path))
            said = await p.until("said", wait_s=30)
            await asyncio.sleep(1.5)
            # Nothing said on hold reached the session.
            assert not [e for _, e in watcher.events if e["type"].startswith("input_audio")]
            assert said["at"] > 0
            p.send("unhold")
            await p.until("media", status=1, wait_s=10)
            p.send("say", path=str(clip.path))
            await watcher.until("input_audio_buffer.speech_started", 30)
            await watcher.until("response.created", 30)


async def test_the_caller_hanging_up_mid_reply_or_vanishing_ends_the_session(
    sip: SipServer, sdk: openai.AsyncOpenAI, clips
) -> None:
    async with phone() as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.accept(call_id, type="realtime", instructions="SLOW")
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            p.send("say", path=str(clips["en_ldc93s1_8k"].path))
            await watcher.until("output_audio_buffer.started", 60)
            await p.until("heard", wait_s=30)
            p.send("bye")  # BYE in the middle of a long reply
            await asyncio.wait_for(watcher.closed.wait(), 10)
        assert await hung_up(sip, call_id) == 404
    async with phone() as p:
        call_id = await ring(sip, p)
        await sdk.realtime.calls.accept(call_id, type="realtime")
        await p.until("state", state="CONFIRMED", wait_s=10)
        async with side(sdk, call_id) as watcher:
            assert p.process is not None
            p.process.kill()  # no BYE, no more RTP
            gone = time.monotonic()
            await asyncio.wait_for(watcher.closed.wait(), RTP_TIMEOUT_S + 10)
            assert time.monotonic() - gone >= RTP_TIMEOUT_S - 1
        assert await hung_up(sip, call_id) == 404
    log = sip.server.log.read_text()
    assert "Traceback" not in log and '"level": "ERROR"' not in log, log[-3000:]
    assert f"sip call {call_id}: no RTP for {RTP_TIMEOUT_S} s" in log


# --- the pieces, without a server -------------------------------------------------------------

INVITE = (
    "INVITE sip:+15550100@10.0.0.5:5060;transport=udp SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK776\r\n"
    'From: "Ann" <sip:+15550111@trunk.example.com>;tag=1928\r\n'
    "To: <sip:+15550100@parley.example.com>\r\n"
    "Call-ID: a84b4c76e66710\r\n"
    "Authorization: Digest username=ann, response=secret\r\n"
    "X-Account: 42\r\n"
    "X-Note: first\r\n"
    " and folded\r\n"
    "X-Account: 43\r\n"
    "Content-Type: application/sdp\r\n"
    "\r\n"
    "v=0\r\nm=audio 4000 RTP/AVP 0 8 101\r\n"
)


def test_an_invite_is_listed_as_openai_passes_it_on() -> None:
    incoming = incoming_of(INVITE, "10.0.0.9:5060")
    assert incoming.request_uri == "sip:+15550100@10.0.0.5:5060;transport=udp"
    assert (incoming.called, incoming.caller) == ("+15550100", "+15550111")
    names = [name for name, _ in incoming.headers]
    # In order, repeats kept, folded lines joined, credentials and the body left out.
    assert names == [
        "Via",
        "From",
        "To",
        "Call-ID",
        "X-Account",
        "X-Note",
        "X-Account",
        "Content-Type",
    ]
    assert ("X-Note", "first and folded") in incoming.headers
    assert not any("secret" in value or "m=audio" in value for _, value in incoming.headers)
    event = incoming_event("rtc_x", incoming.headers)
    model = RealtimeCallIncomingWebhookEvent.model_validate(event)
    assert model.data.call_id == "rtc_x" and model.data.sip_headers[4].value == "42"
    # A tel: Request-URI and compact headers name the numbers too.
    compact = incoming_of("INVITE tel:+15550100 SIP/2.0\r\nf: <sip:ann@x>\r\n\r\n", "")
    assert (compact.called, compact.caller) == ("+15550100", "ann")


def test_listen_addresses_and_a_missing_pjsua2(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_listen("127.0.0.1:5060") == ("127.0.0.1", 5060)
    assert parse_listen("[::1]:5062") == ("::1", 5062)
    assert parse_listen(":5060") == ("0.0.0.0", 5060)
    for bad in ("5060", "host:", "host:70000", "host:x"):
        with pytest.raises(ValueError):
            parse_listen(bad)
    settings = Settings.model_validate({"telephony": {"sip_listen": "nowhere"}})
    with pytest.raises(ConfigError, match="HOST:PORT"):
        check_sip(settings)
    hooked = {"sip_listen": "127.0.0.1:5060", "webhook_url": "http://127.0.0.1:9/hooks"}
    with pytest.raises(ConfigError, match="webhook_secret"):
        check_sip(Settings.model_validate({"telephony": hooked}))
    monkeypatch.setitem(sys.modules, "pjsua2", None)  # as if the 'sip' extra were not installed
    with pytest.raises(SipUnavailable, match=r"parley\[sip\]"):
        sip_transport.load_pjsua2()


def test_the_reply_goes_out_in_20ms_frames_and_counts_what_was_sent() -> None:
    posted: list[Any] = []
    reply = SipReply(post=lambda fn, *args: posted.append((fn, args)))
    events: list[dict[str, Any]] = []
    reply.emit = events.append

    def run_posted() -> None:
        while posted:
            fn, args = posted.pop(0)
            fn(*args)

    assert reply.played_ms("resp_a") is None
    assert not reply.pull().any()  # silence between replies
    reply.play("resp_a", Frame(np.full(FRAME * 2 + 40, 1000, np.int16), 8000))
    reply.finish("resp_a")
    assert reply.played_ms("resp_a") == 0  # queued, not yet sent
    first = reply.pull()
    run_posted()
    assert (first == 1000).all() and reply.played_ms("resp_a") == 20
    assert events == [{"type": "output_audio_buffer.started", "response_id": "resp_a"}]
    reply.pull()
    last = reply.pull()  # 40 samples of reply, then silence: the reply is over
    run_posted()
    assert (last[:40] == 1000).all() and not last[40:].any()
    assert reply.played_ms("resp_a") == 45
    assert events[-1] == {"type": "output_audio_buffer.stopped", "response_id": "resp_a"}
    # Another reply at 24 kHz is resampled to the line's 8 kHz; a barge-in clears what is left.
    reply.play("resp_b", Frame(np.full(24000, 2000, np.int16), 24000))
    reply.pull()
    run_posted()
    reply.clear("resp_b")
    assert events[-1] == {"type": "output_audio_buffer.cleared", "response_id": "resp_b"}
    assert reply.played_ms("resp_b") == 20
    assert not reply.pull().any()
    reply.end()  # the call is over: later audio goes nowhere
    reply.play("resp_c", Frame(np.full(FRAME, 1000, np.int16), 8000))
    assert not reply.pull().any()
