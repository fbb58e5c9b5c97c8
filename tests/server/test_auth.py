"""Keys, tenants, ephemeral client secrets and limits, against ``parley serve`` with auth on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets

from parley.store import Database
from tests.server.conftest import ROOT, Server, start_server, stop_server


def cli(db: Path, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "parley.cli", *args, "--set", f"server.database={db}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    return proc.stdout


def new_key(db: Path, tenant: str, *limits: str) -> str:
    return cli(db, "keys", "create", "--tenant", tenant, *limits).strip().splitlines()[-1]


@dataclass
class AuthServer:
    server: Server
    db: Path
    key_a: str
    key_b: str


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthServer]:
    tmp = tmp_path_factory.mktemp("auth")
    db = tmp / "parley.db"
    key_a = new_key(db, "acme")
    key_b = new_key(db, "globex")
    cli(db, "prompts", "import", str(ROOT / "examples/prompts/support.toml"), "--tenant", "acme")
    server = start_server(tmp, auth=True)
    yield AuthServer(server, db, key_a, key_b)
    stop_server(server)


async def post(url: str, body: dict[str, object], key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with httpx.AsyncClient() as http:
        return await http.post(url, json=body, headers=headers)


def sdk(s: AuthServer, key: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=s.server.base_url, api_key=key, max_retries=0)


async def first_event(s: AuthServer, key: str) -> dict[str, object]:
    async with sdk(s, key) as client, client.realtime.connect(model="parley") as conn:
        return dict(json.loads(await conn.recv_bytes()))


async def create_secret(s: AuthServer, key: str, **kw: object) -> Any:
    async with sdk(s, key) as client:
        return await client.realtime.client_secrets.create(**kw)  # type: ignore[arg-type]


async def test_auth_keys_are_required_and_checked(auth_server: AuthServer) -> None:
    s = auth_server
    async with httpx.AsyncClient() as http:
        health = await http.get(f"http://127.0.0.1:{s.server.port}/healthz")
    assert health.status_code == 200
    assert (await first_event(s, s.key_a))["type"] == "session.created"
    for bad in ("sk-parley-wrong", "nonsense"):
        with pytest.raises(Exception) as refused:
            await first_event(s, bad)
        assert "401" in str(refused.value)
    response = await post(f"{s.server.base_url}/realtime/client_secrets", {})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "missing_api_key"


async def test_auth_revoked_key_stops_working(auth_server: AuthServer) -> None:
    s = auth_server
    key = new_key(s.db, "acme", "--name", "temp")
    assert (await first_event(s, key))["type"] == "session.created"
    listing = cli(s.db, "keys", "list", "--tenant", "acme")
    assert key not in listing  # only the prefix is ever shown
    cli(s.db, "keys", "revoke", key[:14], "--tenant", "acme")
    with pytest.raises(Exception, match="401"):
        await first_event(s, key)
    with sqlite_rows(s.db, "SELECT hash FROM api_keys") as hashes:
        assert all(key not in h for h in hashes)  # stored hashed, never in clear


class sqlite_rows:
    def __init__(self, db: Path, sql: str) -> None:
        self.database = Database(db)
        self.sql = sql

    def __enter__(self) -> list[str]:
        return [str(row[0]) for row in self.database.query(self.sql)]

    def __exit__(self, *exc: object) -> None:
        self.database.close()


async def test_auth_ephemeral_client_secret_one_connection(auth_server: AuthServer) -> None:
    s = auth_server
    secret = await create_secret(
        s,
        s.key_a,
        session={"type": "realtime", "instructions": "Speak like a pirate."},
        expires_after={"anchor": "created_at", "seconds": 600},
    )
    assert secret.value.startswith("ek_")
    assert secret.session.instructions == "Speak like a pirate."  # type: ignore[union-attr]
    created = await first_event(s, secret.value)
    assert created["session"]["instructions"] == "Speak like a pirate."  # type: ignore[index]
    with pytest.raises(Exception, match="401"):
        await first_event(s, secret.value)  # used once already
    later = await create_secret(s, s.key_a, session={"type": "realtime"})
    with sqlite_rows(s.db, "SELECT 1") as _:
        database = Database(s.db)
        database.execute("UPDATE client_secrets SET expires_at = 0 WHERE used_at IS NULL")
        database.close()
    with pytest.raises(Exception, match="401"):
        await first_event(s, later.value)  # expired
    fresh = await create_secret(s, s.key_a, session={"type": "realtime"})
    response = await post(f"{s.server.base_url}/realtime/client_secrets", {}, fresh.value)
    assert response.status_code == 401  # an ephemeral key only opens a Realtime connection
    for body, param in (
        ({"expires_after": {"seconds": 5}}, "expires_after.seconds"),
        (
            {"session": {"type": "realtime", "output_modalities": ["video"]}},
            "session.output_modalities",
        ),
    ):
        bad = await post(f"{s.server.base_url}/realtime/client_secrets", body, s.key_a)
        assert bad.status_code == 400 and bad.json()["error"]["param"].startswith(param)


async def test_auth_browser_subprotocol(auth_server: AuthServer) -> None:
    s = auth_server
    url = f"ws://127.0.0.1:{s.server.port}/v1/realtime?model=parley"
    async with websockets.connect(
        url, subprotocols=["realtime", f"openai-insecure-api-key.{s.key_b}"]
    ) as ws:
        assert ws.subprotocol == "realtime"
        assert json.loads(await ws.recv())["type"] == "session.created"


async def test_auth_tenants_do_not_see_each_others_prompts(auth_server: AuthServer) -> None:
    s = auth_server
    update = {
        "type": "session.update",
        "session": {
            "type": "realtime",
            "prompt": {"id": "pmpt_support", "variables": {"company": "Acme"}},
        },
    }
    async with sdk(s, s.key_a) as client, client.realtime.connect(model="parley") as conn:
        await conn.recv_bytes()
        await conn.send(update)  # type: ignore[arg-type]
        assert json.loads(await conn.recv_bytes())["type"] == "session.updated"
    async with sdk(s, s.key_b) as client, client.realtime.connect(model="parley") as conn:
        await conn.recv_bytes()
        await conn.send(update)  # type: ignore[arg-type]
        error = json.loads(await conn.recv_bytes())
        assert error["type"] == "error" and error["error"]["param"] == "prompt.id"
    assert "pmpt_support" not in cli(s.db, "prompts", "list", "--tenant", "globex")


async def test_auth_limits(auth_server: AuthServer) -> None:
    s = auth_server
    rpm = new_key(s.db, "acme", "--rpm", "2")
    url = f"{s.server.base_url}/realtime/client_secrets"
    codes = [await post(url, {}, rpm) for _ in range(3)]
    assert [r.status_code for r in codes] == [200, 200, 429]
    assert codes[0].headers["x-ratelimit-remaining-requests"] == "1"
    assert codes[2].json()["error"]["code"] == "rate_limit_exceeded"
    assert int(codes[2].headers["retry-after"]) >= 1

    one = new_key(s.db, "acme", "--max-sessions", "1")
    async with sdk(s, one) as client, client.realtime.connect(model="parley") as conn:
        await conn.recv_bytes()
        with pytest.raises(Exception, match="429"):
            await first_event(s, one)
    await asyncio.sleep(0.2)
    assert (await first_event(s, one))["type"] == "session.created"  # the slot came back

    short = new_key(s.db, "acme", "--max-session-seconds", "1")
    async with sdk(s, short) as client, client.realtime.connect(model="parley") as conn:
        await conn.recv_bytes()
        error = json.loads(await asyncio.wait_for(conn.recv_bytes(), 5))
        assert error["type"] == "error" and error["error"]["code"] == "session_expired"


async def test_auth_metrics_need_the_operator_token_not_a_tenant_key(
    auth_server: AuthServer,
) -> None:
    s = auth_server
    url = f"http://127.0.0.1:{s.server.port}/metrics"
    async with httpx.AsyncClient() as http:
        # No metrics token is configured: loopback scrapes work (the tests run on loopback).
        assert (await http.get(url)).status_code == 200


def test_auth_metrics_token(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from parley.config import load_settings
    from parley.engines.registry import build_engines
    from parley.server.app import create_app

    settings = load_settings(env={}, overrides={"server.metrics_token": "op-secret"})
    database = Database(tmp_path / "p.db")
    app = create_app(settings, build_engines(settings), database=database)
    with TestClient(app) as client:
        assert client.get("/metrics").status_code == 401
        tenant_key = "sk-parley-" + "x" * 40
        assert (
            client.get("/metrics", headers={"Authorization": f"Bearer {tenant_key}"}).status_code
            == 401
        )
        ok = client.get("/metrics", headers={"Authorization": "Bearer op-secret"})
        assert ok.status_code == 200 and "parley_active_sessions" in ok.text
    database.close()


async def test_auth_rest_endpoints_through_parley_serve_with_a_key(
    auth_server: AuthServer, clips: dict[str, Any]
) -> None:
    """Every REST endpoint through the SDK against the full server, keyed; none without."""
    s = auth_server
    async with sdk(s, s.key_a) as client:
        speech = await client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hello from parley.", response_format="wav"
        )
        audio = await speech.aread()
        assert audio[:4] == b"RIFF" and len(audio) > 10_000
        with clips["en_goforward_raw"].path.open("rb") as f:
            text = await client.audio.transcriptions.create(model="whisper-1", file=f)
        assert "forward" in text.text
        chat = await client.chat.completions.create(
            model="parley", messages=[{"role": "user", "content": "How do I start parley?"}]
        )
        assert "parley" in (chat.choices[0].message.content or "").lower()
        assert any(m.id == "whisper-1" for m in (await client.models.list()).data)
    async with sdk(s, "sk-parley-nope") as client:
        with pytest.raises(openai.AuthenticationError):
            await client.models.list()
