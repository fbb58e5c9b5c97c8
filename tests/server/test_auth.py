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
        [
            sys.executable,
            "-m",
            "parley.cli",
            *args,
            "--set",
            f"server.database={db}",
            # The audit key beside the database, as start_server's servers use it.
            "--set",
            f"trust.audit_key_file={db.parent / 'audit.key'}",
        ],
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

    settings = load_settings(
        env={"PARLEY_PROFILE": "fast"}, overrides={"server.metrics_token": "op-secret"}
    )
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


# --- the key store's cache and revocation generation ---------------------------------------------


def test_auth_key_cache_sees_a_revocation_by_another_process(database_url: str) -> None:
    from parley.store.keys import KeyStore

    server_db, cli_db = Database(database_url), Database(database_url)
    server, other = KeyStore(server_db), KeyStore(cli_db)
    token, key = other.create_key("acme")
    before = server.generation()
    assert server.authenticate(token) == key and server.is_active(key.id)
    assert server.generation() == before  # lookups are cached: nothing changed
    other.revoke("acme", key.id)  # another connection commits: the cache is stale
    assert server.generation() != before
    assert server.authenticate(token) is None and not server.is_active(key.id)
    assert not server.is_active("key_unknown")
    server_db.close()
    cli_db.close()


def test_auth_key_cache_sees_a_revocation_on_its_own_connection(database: Database) -> None:
    from parley.store.keys import KeyStore

    db = database
    store, admin = KeyStore(db), KeyStore(db)  # one connection, two stores
    token, key = admin.create_key("acme")
    assert store.authenticate(token) == key and store.is_active(key.id)
    before = store.generation()
    admin.revoke("acme", key.id)
    assert store.generation() != before
    assert store.authenticate(token) is None and not store.is_active(key.id)


def test_auth_key_cache_is_bounded(database: Database) -> None:
    from parley.store.keys import KeyStore

    db = database
    store = KeyStore(db, cache_size=2)
    tokens = [store.create_key("acme")[0] for _ in range(4)]
    for token in tokens:
        assert store.authenticate(token) is not None
    assert len(store._by_hash) == 2
    assert store.authenticate("sk-parley-" + "x" * 40) is None  # unknown tokens are not kept
    assert len(store._by_hash) == 2


async def test_auth_open_session_of_a_revoked_key_ends(auth_server: AuthServer) -> None:
    s = auth_server
    key = new_key(s.db, "acme", "--name", "to-revoke")
    url = f"ws://127.0.0.1:{s.server.port}/v1/realtime"
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {key}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "session.created"
        await asyncio.to_thread(cli, s.db, "keys", "revoke", key[:14], "--tenant", "acme")
        async with asyncio.timeout(10):  # checked every 2 s
            error = json.loads(await ws.recv())
            assert error["type"] == "error" and error["error"]["code"] == "session_revoked"
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await ws.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


# --- the handshake gate ---------------------------------------------------------------------------


async def test_auth_handshake_gate_queues_then_refuses() -> None:
    from parley.server.auth import HandshakeGate

    gate = HandshakeGate(limit=2, wait_s=0.2)
    assert await gate.acquire() and await gate.acquire()
    third = asyncio.create_task(gate.acquire())
    fourth = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.01)
    assert gate.waiting == 2 and not third.done()
    gate.release()  # the slot passes to the longest waiter
    assert await third and gate.active == 2 and gate.waiting == 1
    assert not await fourth  # waited its 0.2 s
    assert gate.refused == 1 and gate.waiting == 0
    gate.release()
    gate.release()
    assert gate.active == 0


async def test_auth_handshake_gate_cancelled_waiter_keeps_no_slot() -> None:
    from parley.server.auth import HandshakeGate

    gate = HandshakeGate(limit=1, wait_s=5)
    assert await gate.acquire()
    waiter = asyncio.create_task(gate.acquire())
    await asyncio.sleep(0.01)
    waiter.cancel()  # the client went away while queued
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.release()
    assert gate.active == 0 and gate.waiting == 0
    assert await gate.acquire()


async def test_auth_middleware_refuses_handshakes_past_the_gate_with_503() -> None:
    from parley.server.auth import AuthMiddleware, HandshakeGate, Limiter

    setting_up = asyncio.Event()
    finish = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "websocket.accept"})
        setting_up.set()
        await finish.wait()  # a slow session setup: the slot is held until the first event
        await send({"type": "websocket.send", "text": "{}"})

    gate = HandshakeGate(limit=1, wait_s=0.1)
    middleware = AuthMiddleware(app, None, Limiter(), gate=gate)

    def scope() -> dict[str, Any]:
        return {
            "type": "websocket",
            "path": "/v1/realtime",
            "headers": [],
            "extensions": {"websocket.http.response": {}},
        }

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    first_sent: list[dict[str, Any]] = []
    refused: list[dict[str, Any]] = []

    async def collect(into: list[dict[str, Any]], message: Any) -> None:
        into.append(dict(message))

    first = asyncio.create_task(middleware(scope(), receive, lambda m: collect(first_sent, m)))
    await setting_up.wait()
    await middleware(scope(), receive, lambda m: collect(refused, m))
    assert refused[0]["type"] == "websocket.http.response.start"
    assert refused[0]["status"] == 503 and (b"retry-after", b"1") in refused[0]["headers"]
    assert json.loads(refused[1]["body"])["error"]["code"] == "server_overloaded"
    finish.set()
    await first
    assert [m["type"] for m in first_sent] == ["websocket.accept", "websocket.send"]
    assert gate.active == 0 and gate.refused == 1
