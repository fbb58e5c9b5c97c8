"""WebRTC calls with keys: an ephemeral key is spent once on an offer, tenants do not see each
other's calls, and the web page's demo key is given only where the operator allows it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from aiortc import RTCSessionDescription

from tests.server.conftest import Server, start_server, stop_server
from tests.server.test_auth import new_key
from tests.transports.rtc_client import RtcCaller

LOOPBACK = ("--set", 'webrtc.host_addresses=["127.0.0.1"]')


@dataclass
class Keyed:
    server: Server
    db: Path
    acme: str
    globex: str


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    tmp = tmp_path_factory.mktemp("rtc-keys")
    db = tmp / "parley.db"
    acme, globex = new_key(db, "acme"), new_key(db, "globex")
    server = start_server(
        tmp,
        *LOOPBACK,
        "--web-demo-tenant",
        "demo",
        auth=True,
        env={"PARLEY_LLM_BASE_URL": ""},
    )
    yield Keyed(server, db, acme, globex)
    stop_server(server)


async def _secret(s: Keyed, key: str, session: dict[str, object]) -> str:
    async with httpx.AsyncClient() as http:
        r = await http.post(
            f"{s.server.base_url}/realtime/client_secrets",
            json={"session": session},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert r.status_code == 200, r.text
    return str(r.json()["value"])


async def test_an_ephemeral_key_opens_one_call_with_its_session(keyed: Keyed) -> None:
    secret = await _secret(keyed, keyed.acme, {"type": "realtime", "instructions": "Be kind."})
    caller = RtcCaller(keyed.server.base_url, key=secret)
    again = RtcCaller(keyed.server.base_url, key=secret)
    nobody = RtcCaller(keyed.server.base_url)
    try:
        answer = await caller.connect()
        assert answer.status_code == 201, answer.text
        created = await caller.until("session.created", 30)
        assert created["session"]["instructions"] == "Be kind."
        # Spent: the same key opens nothing more, and no key at all is refused.
        assert (await again.connect()).status_code == 401
        refused = await nobody.connect()
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "missing_api_key"
        # Another tenant neither hangs up nor joins acme's call; acme's own key does.
        call = f"{keyed.server.base_url}/realtime/calls/{caller.call_id}/hangup"
        async with httpx.AsyncClient() as http:
            other = await http.post(call, headers={"Authorization": f"Bearer {keyed.globex}"})
            assert other.status_code == 404
        globex = openai.AsyncOpenAI(base_url=keyed.server.base_url, api_key=keyed.globex)
        async with globex:
            with pytest.raises(Exception, match="404"):
                async with globex.realtime.connect(call_id=caller.call_id) as side:
                    await side.recv()
        async with httpx.AsyncClient() as http:
            mine = await http.post(call, headers={"Authorization": f"Bearer {keyed.acme}"})
            assert mine.status_code == 200
        for _ in range(100):
            if caller.channel.readyState == "closed":
                break
            await asyncio.sleep(0.1)
        assert caller.channel.readyState == "closed"
    finally:
        for c in (caller, again, nobody):
            await c.close()


async def test_the_web_page_gets_a_demo_key_from_this_machine(keyed: Keyed) -> None:
    base = f"http://127.0.0.1:{keyed.server.port}"
    async with httpx.AsyncClient() as http:
        config = (await http.get(f"{base}/v1/parley/web/config")).json()
        assert config["auth"] is True and config["demo_key"] is True
        assert config["voices"] and config["default_voice"]
        minted = await http.post(
            f"{base}/v1/parley/web/client_secrets",
            json={"session": {"type": "realtime", "instructions": "Demo."}},
        )
        assert minted.status_code == 200, minted.text
        secret = minted.json()["value"]
        assert secret.startswith("ek_") and minted.json()["session"]["instructions"] == "Demo."
        bad = await http.post(
            f"{base}/v1/parley/web/client_secrets",
            json={"session": {"type": "realtime", "audio": {"output": {"voice": "nobody"}}}},
        )
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "session.audio.output.voice"
        # The page and its files need no key; the API still does.
        assert (await http.get(f"{base}/")).status_code == 200
        assert (await http.get(f"{base}/v1/models")).status_code == 401
    caller = RtcCaller(keyed.server.base_url, key=secret)
    try:
        sdp = await caller.offer()
        async with httpx.AsyncClient() as http:
            answer = await http.post(
                f"{keyed.server.base_url}/realtime/calls",
                content=sdp,
                headers={"Authorization": f"Bearer {secret}", "Content-Type": "application/sdp"},
            )
        assert answer.status_code == 201, answer.text
        await caller.pc.setRemoteDescription(RTCSessionDescription(answer.text, "answer"))
        created = await caller.until("session.created", 30)
        assert created["session"]["instructions"] == "Demo."
    finally:
        await caller.close()


def test_the_demo_key_is_off_unless_the_operator_turns_it_on(tmp_path: Path) -> None:
    new_key(tmp_path / "parley.db", "acme")
    server = start_server(tmp_path, auth=True)
    try:
        base = f"http://127.0.0.1:{server.port}"
        assert httpx.get(f"{base}/v1/parley/web/config").json()["demo_key"] is False
        r = httpx.post(f"{base}/v1/parley/web/client_secrets", json={})
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "permission_denied"
    finally:
        stop_server(server)
