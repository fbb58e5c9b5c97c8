"""The control plane end to end (issue 13): the example policy on a real ``parley serve``.

The external engine is the scripted OpenAI-compatible server of ``tests/fakes/llm_http.py`` on a
loopback port (it records every request it gets); the on-premises one is the real faq engine.
Every check reads what an operator would: the requests the external engine received, the
ledger in the database, the costs API, the events a client saw.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.fakes.llm_http import FakeLLMServer
from tests.server.conftest import ROOT, Server, start_server, stop_server
from tests.server.realtime_client import Client, speech_24k
from tests.server.test_auth import cli, new_key

ADMIN = "operator-secret-token"
CARD = "4111 1111 1111 1111"
SPOKEN_CARD = "my card is four one one one one one one one one one one one one one one one"


def write_policy(path: Path, cloud_url: str) -> Path:
    """The shipped example policy, with the external engine at ``cloud_url``."""
    text = (ROOT / "examples" / "policy.yaml").read_text()
    path.write_text(text.replace("http://127.0.0.1:8799/v1", cloud_url))
    return path


@dataclass
class Plane:
    server: Server
    db: Path
    cloud: FakeLLMServer
    keys: dict[str, str]


def start_plane(tmp: Path, cloud: FakeLLMServer, *tenants: str) -> Plane:
    db = tmp / "parley.db"
    keys = {tenant: new_key(db, tenant) for tenant in tenants}
    policy = write_policy(tmp / "policy.yaml", cloud.base_url)
    server = start_server(
        tmp,
        "--policy",
        str(policy),
        "--set",
        f"server.admin_token={ADMIN}",
        auth=True,
    )
    return Plane(server, db, cloud, keys)


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    tmp = tmp_path_factory.mktemp("plane")
    with FakeLLMServer() as cloud:
        p = start_plane(tmp, cloud, "globex", "acme", "capped", "soft", "voice")
        yield p
        stop_server(p.server)


class Session:
    """A Realtime session of one tenant, reading raw events (``parley.*`` ones included)."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.events: list[dict[str, Any]] = []

    async def until(self, *kinds: str, wait_s: float = 30) -> dict[str, Any]:
        async with asyncio.timeout(wait_s):
            while True:
                event = json.loads(await self.conn.recv_bytes())
                self.events.append(event)
                if event["type"] in kinds:
                    return event

    async def ask(self, text: str) -> dict[str, Any]:
        """A user message and ``response.create``; the ``response.done`` or ``error``."""
        await Client(self.conn).ask(text)
        return await self.until("response.done", "error")


def sdk(plane: Plane, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=plane.server.base_url, api_key=key, max_retries=0)


async def session(plane: Plane, tenant: str) -> tuple[openai.AsyncOpenAI, Any]:
    client = sdk(plane, plane.keys[tenant])
    manager = client.realtime.connect(model="parley")
    conn = await manager.__aenter__()
    first = json.loads(await conn.recv_bytes())
    assert first["type"] == "session.created"
    await conn.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    return client, (manager, conn)


def ledger(db: Path, sql: str = "", params: tuple[Any, ...] = ()) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute(f"SELECT * FROM usage_records {sql}", params).fetchall()


def cloud_saw(cloud: FakeLLMServer, needle: str) -> bool:
    return any(needle in json.dumps(body) for body in cloud.requests)


async def test_control_card_numbers_never_reach_the_external_engine(plane: Plane) -> None:
    client, (manager, conn) = await session(plane, "globex")
    try:
        s = Session(conn)
        before = len(plane.cloud.requests)
        done = await s.ask("Hello, what are your opening hours?")
        assert done["type"] == "response.done"
        assert done["response"]["status"] == "completed"
        assert len(plane.cloud.requests) == before + 1  # the default route: the cloud first
        rid_default = done["response"]["id"]

        done = await s.ask(f"My card number is {CARD}, please update it.")
        assert done["response"]["status"] == "completed"
        assert done["response"]["output"], "the caller still gets an answer"
        after_card = len(plane.cloud.requests)
        assert after_card == before + 1, "the turn with the card went to the external engine"

        # The history now holds the card: the session stays on the restricted route.
        done = await s.ask("And what is the weather like?")
        assert done["response"]["status"] == "completed"
        assert len(plane.cloud.requests) == after_card
        assert not cloud_saw(plane.cloud, "4111")

        rows = ledger(plane.db, "WHERE stage = 'llm' AND tenant = 'globex' ORDER BY time")
        routes = {(r["response_id"], r["route"], r["engine"]) for r in rows}
        assert (rid_default, "default", "cloud-llm") in routes
        assert any(
            r["route"] == "payment-data-stays-local" and r["engine"] == "local-llm" for r in rows
        )
        assert all("4111" not in json.dumps(dict(r)) for r in ledger(plane.db))
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()


async def test_control_spoken_card_numbers_stay_local(plane: Plane) -> None:
    client, (manager, conn) = await session(plane, "globex")
    try:
        before = len(plane.cloud.requests)
        done = await Session(conn).ask(SPOKEN_CARD)
        assert done["response"]["status"] == "completed"
        assert len(plane.cloud.requests) == before
        assert not cloud_saw(plane.cloud, "four one one one")
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()


async def test_control_order_numbers_are_not_cards(plane: Plane) -> None:
    client, (manager, conn) = await session(plane, "globex")
    try:
        before = len(plane.cloud.requests)
        done = await Session(conn).ask("My order number is 1234 5678 9012 3456.")
        assert done["response"]["status"] == "completed"
        assert len(plane.cloud.requests) == before + 1  # no Luhn: not a card, the cloud answers
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()


async def test_control_usage_and_costs_api(plane: Plane) -> None:
    client, (manager, conn) = await session(plane, "acme")
    try:
        done = await Session(conn).ask("Hello from acme.")
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()
    usage = done["response"]["usage"]
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    assert {"input_token_details", "output_token_details"} <= set(usage)

    rows = ledger(plane.db, "WHERE response_id = ?", (done["response"]["id"],))
    llm = [r for r in rows if r["stage"] == "llm"]
    assert [r["engine"] for r in llm] == ["cloud-llm"]
    assert llm[0]["route"] == "acme-premium"
    assert llm[0]["outcome"] == "ok"
    # The scripted cloud reports 20 input and 10 output tokens at the example's prices.
    assert llm[0]["input_tokens"] == 20 and llm[0]["output_tokens"] == 10
    assert llm[0]["cost_nusd"] == 20 * 2500 + 10 * 10000
    assert llm[0]["session_id"].startswith("sess_") and llm[0]["key_id"].startswith("key_")

    start = int(time.time()) - 3600
    url = f"{plane.server.base_url}/organization/costs"
    async with httpx.AsyncClient() as http:
        mine = await http.get(
            url,
            params={"start_time": start, "group_by": ["project_id", "line_item"]},
            headers={"Authorization": f"Bearer {plane.keys['acme']}"},
        )
        everyone = await http.get(
            url,
            params=[("start_time", start), ("group_by", "project_id")],
            headers={"Authorization": f"Bearer {ADMIN}"},
        )
        stranger = await http.get(url, params={"start_time": start})
    assert mine.status_code == 200, mine.text
    page = mine.json()
    assert page["object"] == "page"
    results = [r for b in page["data"] for r in b["results"]]
    assert {r["project_id"] for r in results} == {"acme"}
    assert "llm:cloud-llm" in {r["line_item"] for r in results}
    assert all(r["amount"]["currency"] == "usd" for r in results)
    assert everyone.status_code == 200
    projects = {r["project_id"] for b in everyone.json()["data"] for r in b["results"]}
    assert {"acme", "globex"} <= projects
    assert stranger.status_code == 401

    async with httpx.AsyncClient() as http:
        metrics = await http.get(
            f"http://127.0.0.1:{plane.server.port}/metrics",
        )
    assert 'parley_cost_usd_total{engine="cloud-llm",stage="llm",tenant="acme"}' in metrics.text


async def test_control_hard_budget_refuses_before_any_engine_call(plane: Plane) -> None:
    cli(plane.db, "budgets", "set", "--tenant", "capped", "--limit-usd", "0.000001")
    client, (manager, conn) = await session(plane, "capped")
    try:
        s = Session(conn)
        before = len(plane.cloud.requests)
        # The first reply's bound (its prompt and max_output_tokens) is past the limit.
        event = await s.ask("Hello, anyone there?")
        assert event["type"] == "error", event
        assert event["error"]["code"] == "insufficient_quota"
        assert event["error"]["type"] == "insufficient_quota"
        await asyncio.sleep(0.3)
        assert not [e for e in s.events if e["type"] == "response.created"]
        assert len(plane.cloud.requests) == before
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()

    async with sdk(plane, plane.keys["capped"]) as rest:
        with pytest.raises(openai.RateLimitError) as caught:
            await rest.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
            )
        with pytest.raises(openai.RateLimitError) as spoken:
            await rest.audio.speech.create(model="tts-1", voice="alloy", input="Hello there.")
        clip = ROOT.parent / "shared" / "speech" / "en_jfk_wav.wav"
        with pytest.raises(openai.RateLimitError) as heard, clip.open("rb") as audio:
            await rest.audio.transcriptions.create(model="whisper-1", file=audio)
    for refusal in (caught, spoken, heard):
        assert refusal.value.code == "insufficient_quota"
        assert refusal.value.body["type"] == "insufficient_quota"  # type: ignore[index]
    assert len(plane.cloud.requests) == before
    assert not ledger(plane.db, "WHERE tenant = 'capped'")  # no engine was called


async def test_control_soft_limit_warns_once(plane: Plane) -> None:
    cli(plane.db, "budgets", "set", "--tenant", "soft", "--limit-usd", "5", "--soft-usd", "0.0001")
    client, (manager, conn) = await session(plane, "soft")
    try:
        s = Session(conn)
        for text in ("Hello.", "Hello again.", "And once more."):
            done = await s.ask(text)
            assert done["type"] == "response.done"
            assert done["response"]["status"] == "completed"
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()
    warnings = [e for e in s.events if e["type"] == "parley.budget.warning"]
    assert len(warnings) == 1, warnings
    assert "soft limit" in warnings[0]["message"]


async def test_control_spoken_turn_is_metered_by_its_audio(
    plane: Plane, clips: dict[str, Any]
) -> None:
    clip = clips["en_librivox_0870"]
    client, (manager, conn) = await session(plane, "voice")
    try:
        s = Session(conn)
        pcm = speech_24k(clip.path)
        await Client(conn).append(pcm)
        done = await s.until("response.done")
        assert done["response"]["status"] == "completed"
    finally:
        await manager.__aexit__(None, None, None)
        await client.close()
    asr = ledger(plane.db, "WHERE tenant = 'voice' AND stage = 'asr'")
    assert len(asr) == 1 and asr[0]["outcome"] == "ok"
    heard = asr[0]["audio_in_s"]
    assert 0.6 * clip.duration_s < heard < 1.5 * clip.duration_s, (heard, clip.duration_s)
    assert asr[0]["cost_nusd"] == pytest.approx(heard * 100_000, abs=2)  # $0.0001 a second
    assert asr[0]["session_id"].startswith("sess_")


async def test_control_concurrent_requests_never_overspend_a_hard_limit(plane: Plane) -> None:
    """20 REST completions race one limit: what was spent (the ledger) stays within it."""
    limit = 0.0045  # about four replies' reservations on the cloud engine
    cli(plane.db, "budgets", "set", "--tenant", "acme", "--limit-usd", str(limit))
    spent_before = sum(r["cost_nusd"] for r in ledger(plane.db, "WHERE tenant = 'acme'"))
    async with sdk(plane, plane.keys["acme"]) as rest:

        async def one(i: int) -> str:
            try:
                await rest.chat.completions.create(
                    model="gpt-4o-mini",
                    messages=[{"role": "user", "content": f"Race {i}"}],
                    max_tokens=100,
                )
            except openai.RateLimitError as exc:
                assert exc.code == "insufficient_quota"
                return "refused"
            return "ok"

        outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    spent = sum(r["cost_nusd"] for r in ledger(plane.db, "WHERE tenant = 'acme'"))
    assert spent <= limit * 1e9, (spent, limit)
    assert "ok" in outcomes and "refused" in outcomes
    assert spent > spent_before


def test_control_failover_and_breaker_when_the_external_engine_dies(tmp_path: Path) -> None:
    cloud = FakeLLMServer().__enter__()
    p = start_plane(tmp_path, cloud, "globex")

    async def ask(text: str) -> dict[str, Any]:
        client, (manager, conn) = await session(p, "globex")
        try:
            return await Session(conn).ask(text)
        finally:
            await manager.__aexit__(None, None, None)
            await client.close()

    try:
        first = asyncio.run(ask("Hello?"))
        assert first["response"]["status"] == "completed"
        assert len(cloud.requests) == 1
        cloud.__exit__(None, None, None)  # the external engine goes away mid-call
        answers = [asyncio.run(ask(f"Are you still there, {i}?")) for i in range(5)]
        for done in answers:
            assert done["type"] == "response.done"
            assert done["response"]["status"] == "completed", done
            assert done["response"]["output"], "the caller still hears an answer"
        outcomes = [
            [
                (r["engine"], r["outcome"])
                for r in ledger(
                    p.db,
                    "WHERE stage = 'llm' AND response_id = ? ORDER BY time",
                    (done["response"]["id"],),
                )
            ]
            for done in answers
        ]
        # Three failures open the breaker (failures: 3): later replies skip the dead engine.
        for attempts in outcomes[:3]:
            assert attempts == [("cloud-llm", "failed_over"), ("local-llm", "ok")], attempts
        for attempts in outcomes[3:]:
            assert attempts == [("local-llm", "ok")], attempts
    finally:
        stop_server(p.server)


def test_control_completed_turn_survives_kill_9(tmp_path: Path) -> None:
    with FakeLLMServer() as cloud:
        p = start_plane(tmp_path, cloud, "globex")
        try:

            async def talk() -> str:
                client, (_, conn) = await session(p, "globex")
                await conn.send(
                    {
                        "type": "session.update",
                        "session": {"type": "realtime", "output_modalities": ["audio"]},
                    }
                )
                done = await Session(conn).ask("Tell me something.")
                assert done["response"]["status"] == "completed"
                # The session stays open: the server dies under it.
                p.server.process.send_signal(signal.SIGKILL)
                p.server.process.wait(10)
                await client.close()
                return str(done["response"]["id"])

            response_id = asyncio.run(talk())
        finally:
            stop_server(p.server)
    rows = ledger(p.db, "WHERE response_id = ?", (response_id,))
    assert {r["stage"] for r in rows} == {"llm", "tts"}
    assert all(r["outcome"] == "ok" for r in rows)
    tts = [r for r in rows if r["stage"] == "tts"]
    assert sum(r["characters"] for r in tts) > 0 and sum(r["cost_nusd"] for r in tts) > 0
