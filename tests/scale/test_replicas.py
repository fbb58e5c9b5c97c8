"""Two gateway replicas on one PostgreSQL and one Redis (issue 17), each a real ``parley serve``
on its own loopback port: keys, limits, budgets, revocation and a replica's death, as clients of
both would see them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import openai
import psycopg
import pytest

from tests.conftest import POSTGRES_URL_VARIABLE, fresh_postgres_database
from tests.fakes.llm_http import FakeLLMServer
from tests.server.conftest import ROOT, Server, start_server, stop_server
from tests.server.test_control_plane import write_policy

REDIS_URL_VARIABLE = "PARLEY_TEST_REDIS_URL"


def _service(variable: str, script: str) -> str:
    url = os.environ.get(variable)
    if not url:
        reason = f"{variable} is not set: start a server with {script}"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the two-replica tests; {reason}")
        pytest.skip(reason)
    return url


@dataclass
class Replicas:
    a: Server
    b: Server
    database: str
    redis: str
    shared: list[str]  # --set flags both replicas and the CLI share
    cloud: FakeLLMServer

    def cli(self, *args: str) -> str:
        flags = [f for s in self.shared for f in ("--set", s)]
        proc = subprocess.run(
            [sys.executable, "-m", "parley.cli", *args, *flags],
            capture_output=True,
            text=True,
            cwd=ROOT,
            check=True,
        )
        return proc.stdout

    def new_key(self, tenant: str, *limits: str) -> str:
        return self.cli("keys", "create", "--tenant", tenant, *limits).strip().splitlines()[-1]

    def spent(self, tenant: str) -> int:
        """What the ledger says ``tenant`` spent, in nano-dollars."""
        with psycopg.connect(self.database) as conn:
            row = conn.execute(
                "SELECT coalesce(sum(cost_nusd), 0) FROM usage_records WHERE tenant = %s",
                (tenant,),
            ).fetchone()
        return int(row[0]) if row else 0

    def sdk(self, server: Server, key: str) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=server.base_url, api_key=key, max_retries=0)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replicas]:
    pg = _service(POSTGRES_URL_VARIABLE, ".ci/postgres.sh")
    redis = _service(REDIS_URL_VARIABLE, ".ci/redis.sh")
    tmp = tmp_path_factory.mktemp("replicas")
    with fresh_postgres_database(pg) as database, FakeLLMServer() as cloud:
        shared = [
            f"server.database={database}",
            f"server.redis_url={redis}",
            # One audit chain, one signing key: every replica signs as the same operator.
            f"trust.audit_key_file={tmp / 'audit.key'}",
            f"trust.watermark_key_file={tmp / 'watermark.key'}",
            "server.revocation_check_s=30",  # revocation must come through Redis, not polling
        ]
        policy = write_policy(tmp / "policy.yaml", cloud.base_url)
        flags = [f for s in shared for f in ("--set", s)]
        servers = []
        for name in ("a", "b"):
            folder = tmp / name
            folder.mkdir()
            servers.append(start_server(folder, *flags, "--policy", str(policy), auth=True))
        r = Replicas(servers[0], servers[1], database, redis, shared, cloud)
        try:
            yield r
        finally:
            for server in servers:
                stop_server(server)


async def _open(server: Server, key: str) -> tuple[Any, Any]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=key, max_retries=0)
    manager = client.realtime.connect(model="parley")
    try:
        conn = await manager.__aenter__()
    except BaseException:
        await client.close()
        raise
    first = json.loads(await conn.recv_bytes())
    assert first["type"] == "session.created"
    return client, (manager, conn)


async def _close(opened: tuple[Any, Any]) -> None:
    client, (manager, _) = opened
    await manager.__aexit__(None, None, None)
    await client.close()


async def test_an_ephemeral_key_from_a_opens_one_session_on_b(replicas: Replicas) -> None:
    key = replicas.new_key("acme")
    async with httpx.AsyncClient() as http:
        minted = await http.post(
            f"{replicas.a.base_url}/realtime/client_secrets",
            json={"session": {"type": "realtime", "instructions": "From A."}},
            headers={"Authorization": f"Bearer {key}"},
        )
    secret = minted.json()["value"]
    opened = await _open(replicas.b, secret)
    try:
        for server in (replicas.a, replicas.b):  # spent, on both
            with pytest.raises(Exception, match="401"):
                await _open(server, secret)
    finally:
        await _close(opened)


async def test_rate_and_session_limits_hold_across_both(replicas: Replicas) -> None:
    key = replicas.new_key("acme", "--rpm", "10", "--max-sessions", "2")
    async with httpx.AsyncClient() as http:
        codes = []
        for i in range(14):
            server = (replicas.a, replicas.b)[i % 2]
            r = await http.get(
                f"{server.base_url}/models", headers={"Authorization": f"Bearer {key}"}
            )
            codes.append(r.status_code)
    assert codes.count(200) == 10 and codes.count(429) == 4, codes


async def test_concurrent_sessions_are_limited_across_both(replicas: Replicas) -> None:
    key = replicas.new_key("acme", "--max-sessions", "2")
    first = await _open(replicas.a, key)
    second = await _open(replicas.b, key)
    try:
        for server in (replicas.a, replicas.b):
            with pytest.raises(Exception, match="429"):
                await _open(server, key)
    finally:
        await _close(first)
        await _close(second)
    again = await _open(replicas.b, key)  # closing frees the slots everywhere
    await _close(again)


async def test_twenty_responses_on_both_never_overshoot_a_budget(replicas: Replicas) -> None:
    key = replicas.new_key("budgeted")
    limit = 0.0045  # about four replies' reservations on the cloud engine
    replicas.cli("budgets", "set", "--tenant", "budgeted", "--limit-usd", str(limit))
    clients = [replicas.sdk(s, key) for s in (replicas.a, replicas.b)]

    async def one(i: int) -> str:
        try:
            await clients[i % 2].chat.completions.create(
                model="gpt-4o-mini",
                messages=[{"role": "user", "content": f"Race {i}"}],
                max_tokens=100,
            )
        except openai.RateLimitError as exc:
            assert exc.code == "insufficient_quota"
            return "refused"
        return "ok"

    try:
        outcomes = await asyncio.gather(*(one(i) for i in range(20)))
    finally:
        for client in clients:
            await client.close()
    spent = replicas.spent("budgeted")
    assert spent <= limit * 1e9, (spent, limit)
    assert "ok" in outcomes and "refused" in outcomes


async def test_a_key_revoked_next_to_a_ends_its_session_on_b(replicas: Replicas) -> None:
    key = replicas.new_key("revokee")
    opened = await _open(replicas.b, key)
    _, (_, conn) = opened
    started = asyncio.get_running_loop().time()
    told = replicas.cli("keys", "revoke", "--tenant", "revokee", key[:14])  # by its prefix
    assert "told 2 gateway replica(s)" in told
    async with asyncio.timeout(5):
        while True:
            event = json.loads(await conn.recv_bytes())
            if event["type"] == "error":
                assert event["error"]["code"] == "session_revoked"
                break
    assert asyncio.get_running_loop().time() - started < 5
    await _close(opened)
    async with httpx.AsyncClient() as http:
        for server in (replicas.a, replicas.b):
            r = await http.get(
                f"{server.base_url}/models", headers={"Authorization": f"Bearer {key}"}
            )
            assert r.status_code == 401


async def test_killing_a_loses_no_completed_turn_and_b_serves_on(replicas: Replicas) -> None:
    """kill -9 of replica A right after a turn: its records are in the shared database, the
    audit chain that both replicas wrote verifies, and B goes on answering."""
    key = replicas.new_key("survivor")
    opened = await _open(replicas.a, key)
    _, (_, conn) = opened
    await conn.send(
        {"type": "session.update", "session": {"type": "realtime", "output_modalities": ["text"]}}
    )
    await conn.send(
        {
            "type": "conversation.item.create",
            "item": {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What is parley?"}],
            },
        }
    )
    await conn.send({"type": "response.create"})
    async with asyncio.timeout(30):
        while (event := json.loads(await conn.recv_bytes()))["type"] != "response.done":
            pass
    assert event["response"]["status"] == "completed"
    response_id = event["response"]["id"]
    replicas.a.process.send_signal(signal.SIGKILL)
    replicas.a.process.wait(10)
    with psycopg.connect(replicas.database) as db:
        stages = {
            row[0]
            for row in db.execute(
                "SELECT stage FROM usage_records WHERE response_id = %s", (response_id,)
            )
        }
        audited = db.execute(
            "SELECT count(*) FROM audit_log WHERE data LIKE %s", (f"%{response_id}%",)
        ).fetchone()
    assert "llm" in stages
    assert audited is not None and audited[0] >= 1
    async with replicas.sdk(replicas.b, key) as rest:
        reply = await rest.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Still there?"}]
        )
    assert reply.choices[0].message.content
    verified = replicas.cli("audit", "verify")
    assert "ok" in verified.lower() or "verified" in verified.lower(), verified
    await _close(opened)
