"""parley.store.shared against a real Redis: what many gateway replicas share.

Each "replica" is a :class:`SharedState` of its own (its own connections and heartbeats); a
crashed one is a child process killed with SIGKILL. The Redis is the one at
$PARLEY_TEST_REDIS_URL (``eval "$(.ci/redis.sh)"`` starts one); without it these tests are
skipped, except in CI (``CI`` set), where they fail. Every test keeps to keys of its own
prefix. The tests that take Redis away start a private ``redis-server`` of their own.

Nothing here asserts how fast something happened, only that it does within a generous bound:
waits are on conditions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from parley.store.shared import (
    RESYNC,
    Admission,
    Location,
    SharedState,
    SharedStateUnavailable,
)

REDIS_URL_VARIABLE = "PARLEY_TEST_REDIS_URL"
ROOT = Path(__file__).resolve().parents[2]
WAIT_S = 30.0  # the most any condition is waited for


def _need(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI runs the shared-state tests on Redis; {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def redis_url() -> str:
    url = os.environ.get(REDIS_URL_VARIABLE)
    if not url:
        _need(f"{REDIS_URL_VARIABLE} is not set: start a server with .ci/redis.sh")
    assert url is not None
    return url


@pytest.fixture
def prefix() -> str:
    return f"parley-test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
async def admin(redis_url: str, prefix: str) -> AsyncIterator[aioredis.Redis]:
    """A plain client, to look at (and finally remove) this test's keys."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        yield client
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


Factory = Callable[..., SharedState]


@pytest.fixture
async def replicas(redis_url: str, prefix: str) -> AsyncIterator[Factory]:
    """Makes replicas' handles on the test's Redis and prefix; all closed afterwards."""
    made: list[SharedState] = []

    def make(**options: Any) -> SharedState:
        options.setdefault("prefix", prefix)
        shared = SharedState.from_url(options.pop("url", redis_url), **options)
        made.append(shared)
        return shared

    try:
        yield make
    finally:
        for shared in made:
            await shared.aclose()


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> float:
    """Waits until ``check()`` is true (at most WAIT_S); returns the seconds it took."""
    start = time.monotonic()
    while not await check():
        if time.monotonic() - start > WAIT_S:
            pytest.fail(f"not within {WAIT_S} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


# -- request rate -------------------------------------------------------------------------


async def test_request_window_holds_across_replicas(replicas: Factory) -> None:
    a, b = replicas(replica_id="a"), replicas(replica_id="b")
    seen = []
    for i in range(5):
        allowed, remaining, reset = await (a if i % 2 else b).request("key_1", 5)
        assert allowed
        seen.append(remaining)
        assert 0 < reset <= 60
    assert seen == [4, 3, 2, 1, 0]
    for shared in (a, b, a):
        allowed, remaining, reset = await shared.request("key_1", 5)
        assert (allowed, remaining) == (False, 0)
        assert 0 < reset <= 60
    # Refused requests were not counted; another key has a window of its own.
    assert await b.remaining("key_1", 5) == (0, pytest.approx(60, abs=30))
    assert (await a.request("key_2", 5))[:2] == (True, 4)
    assert (await b.remaining("key_2", 5))[0] == 4


async def test_request_burst_over_two_replicas_admits_exactly_the_limit(
    replicas: Factory,
) -> None:
    a, b = replicas(), replicas()
    results = await asyncio.gather(*((a, b)[i % 2].request("key_burst", 20) for i in range(60)))
    assert sum(allowed for allowed, _, _ in results) == 20
    assert sorted(r for allowed, r, _ in results if allowed) == list(range(20))


async def test_window_slides_and_old_entries_are_trimmed(
    replicas: Factory, admin: aioredis.Redis, prefix: str
) -> None:
    a, b = replicas(window_s=0.5), replicas(window_s=0.5)
    window = f"{prefix}rl:key_1"
    for i in range(3):
        assert (await (a, b)[i % 2].request("key_1", 3))[0]
    assert not (await a.request("key_1", 3))[0]
    assert await admin.zcard(window) == 3
    # Once the window has passed, requests are allowed again ...
    await eventually(lambda: _allowed(b.request("key_1", 3)), "a request allowed again")
    # ... and the old entries are gone: the set holds only the window's requests.
    assert await admin.zcard(window) <= 3
    # Many requests over many windows never grow it past the limit.
    for _ in range(200):
        await a.request("key_1", 3)
    assert await admin.zcard(window) <= 3
    # An idle key's window is gone entirely.
    await eventually(lambda: _gone(admin, window), "the idle window expired")


async def _allowed(result: Awaitable[tuple[bool, int, float]]) -> bool:
    return (await result)[0]


async def _gone(admin: aioredis.Redis, *keys: str) -> bool:
    return await admin.exists(*keys) == 0


# -- concurrent sessions ------------------------------------------------------------------


async def test_session_limit_holds_under_a_burst_over_two_replicas(replicas: Factory) -> None:
    a, b = replicas(replica_id="a"), replicas(replica_id="b")
    ids = [f"sess_{i}" for i in range(40)]
    results = await asyncio.gather(
        *((a, b)[i % 2].open_session(sid, "key_1", "acme", 3) for i, sid in enumerate(ids))
    )
    opened = [sid for sid, r in zip(ids, results, strict=True) if r is Admission.OPENED]
    assert len(opened) == 3
    assert all(r in (Admission.OPENED, Admission.KEY_LIMIT) for r in results)
    assert await a.session_count(key_id="key_1") == 3
    assert await b.session_count(tenant="acme") == 3
    # Closing one, on whichever replica holds it, frees one slot.
    holder = a if opened[0] in a.held else b
    await holder.close_session(opened[0])
    assert await b.session_count(key_id="key_1") == 2
    more = await asyncio.gather(
        *(b.open_session(f"late_{i}", "key_1", "acme", 3) for i in range(5))
    )
    assert more.count(Admission.OPENED) == 1
    # Reopening an open session renews it and takes no second slot.
    holder = a if opened[1] in a.held else b
    assert await holder.open_session(opened[1], "key_1", "acme", 3) is Admission.OPENED
    assert await a.session_count(key_id="key_1") == 3


async def test_tenant_limit_spans_keys_and_replicas(replicas: Factory) -> None:
    a, b = replicas(), replicas()
    results = await asyncio.gather(
        *(
            (a, b)[i % 2].open_session(f"s{i}", f"key_{i % 3}", "acme", None, tenant_limit=4)
            for i in range(30)
        )
    )
    assert results.count(Admission.OPENED) == 4
    assert results.count(Admission.TENANT_LIMIT) == 26
    assert await a.session_count(tenant="acme") == 4
    # Another tenant is not affected; a key limit is checked first.
    assert await b.open_session("x", "key_9", "other", None, tenant_limit=4)
    assert await b.open_session("y", "key_0", "acme", 0, tenant_limit=4) is Admission.KEY_LIMIT


async def test_heartbeats_keep_sessions_and_a_closed_handle_lets_them_expire(
    replicas: Factory, admin: aioredis.Redis, prefix: str
) -> None:
    a = replicas(session_ttl_s=3.0)
    b = replicas(session_ttl_s=3.0)
    assert await a.open_session("s1", "key_1", "acme", 1)
    await a.register("s1", "acme")
    before = await admin.zscore(f"{prefix}sk:key_1", "s1")
    await asyncio.sleep(0.2)
    assert await a.heartbeat() == 2  # the session and its registry entry
    assert await admin.zscore(f"{prefix}sk:key_1", "s1") > before
    # The background heartbeats (every second here) keep it past its ttl.
    await asyncio.sleep(4.0)
    assert await b.open_session("s2", "key_1", "acme", 1) is Admission.KEY_LIMIT
    assert await b.where("s1") == Location(a.replica_id, "", "acme")
    # A handle closed without closing its sessions (a replica gone) lets them expire.
    await a.aclose()
    await eventually(lambda: _opened(b, "s2", "key_1", 1), "the dead handle's slot freed")
    await eventually(lambda: _nowhere(b, "s1"), "the dead handle's registry entry gone")


async def test_a_heartbeat_never_brings_back_a_closed_session(
    replicas: Factory, admin: aioredis.Redis, prefix: str
) -> None:
    a = replicas()
    for i in range(30):
        assert await a.open_session(f"s{i}", "key_1", "acme", 1)
        await a.register(f"s{i}", "acme")
        # The heartbeat's snapshot may be taken before the close; it must not land after it.
        await asyncio.gather(a.heartbeat(), a.close_session(f"s{i}"), a.unregister(f"s{i}"))
        assert await a.session_count(key_id="key_1") == 0
        assert await a.where(f"s{i}") is None
    assert a.held == frozenset()
    # Renewing some: only those; none: nothing. A Redis that lost its scripts loads them.
    assert await a.open_session("x", "key_1", "acme", None)
    assert await a.open_session("y", "key_1", "acme", None)
    assert await a.heartbeat([]) == 0
    assert await a.heartbeat(["y", "unknown"]) == 1
    await admin.script_flush()
    assert await a.heartbeat() == 2
    assert await a.session_count(tenant="acme") == 2


async def _opened(shared: SharedState, sid: str, key_id: str, limit: int) -> bool:
    return bool(await shared.open_session(sid, key_id, "acme", limit))


async def _nowhere(shared: SharedState, entry_id: str) -> bool:
    return await shared.where(entry_id) is None


CRASHING_REPLICA = textwrap.dedent(
    """
    import asyncio, sys
    from parley.store.shared import SharedState

    async def main():
        url, prefix = sys.argv[1], sys.argv[2]
        shared = SharedState.from_url(url, prefix=prefix, replica_id="doomed",
                                      replica_url="http://127.0.0.1:1", session_ttl_s=2.0)
        for i in range(3):
            assert await shared.open_session(f"doomed_{i}", "key_1", "acme", 3)
        await shared.register("call_doomed", "acme")
        print("ready", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_killed_replicas_sessions_stop_counting(
    replicas: Factory, redis_url: str, prefix: str
) -> None:
    b = replicas(session_ttl_s=2.0)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_REPLICA, redis_url, prefix,
        stdout=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), WAIT_S)
        assert line.strip() == b"ready"
        assert await b.open_session("mine", "key_1", "acme", 3) is Admission.KEY_LIMIT
        assert await b.where("call_doomed") == Location("doomed", "http://127.0.0.1:1", "acme")
        # It heartbeats every 2/3 s: still counted after well over its ttl.
        await asyncio.sleep(3.0)
        assert await b.session_count(key_id="key_1") == 3
        child.send_signal(signal.SIGKILL)
        await asyncio.wait_for(child.wait(), WAIT_S)
        await eventually(lambda: _opened(b, "mine", "key_1", 3), "a slot freed after the kill")
        await eventually(lambda: _nowhere(b, "call_doomed"), "the killed replica's call gone")
        await eventually(lambda: _count_is(b, "key_1", 1), "only the new session counted")
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()


async def _count_is(shared: SharedState, key_id: str, n: int) -> bool:
    return await shared.session_count(key_id=key_id) == n


# -- registry -----------------------------------------------------------------------------


async def test_registry_lookup_and_ownership(replicas: Factory) -> None:
    a = replicas(replica_id="gw-a", replica_url="http://10.0.0.1:8000")
    b = replicas(replica_id="gw-b", replica_url="http://10.0.0.2:8000")
    await a.register("sess_1", "acme")
    await b.register("rtc_2", "globex", url="http://gw-b.internal:8000")
    assert await b.where("sess_1") == Location("gw-a", "http://10.0.0.1:8000", "acme")
    assert await a.where("rtc_2") == Location("gw-b", "http://gw-b.internal:8000", "globex")
    assert await a.where("sess_unknown") is None
    # Only the holder removes its entry.
    assert await b.unregister("sess_1") is False
    assert await b.where("sess_1") is not None
    assert await a.unregister("sess_1") is True
    assert await b.where("sess_1") is None
    assert "sess_1" not in a.held
    # A call taken over by another replica: the first one's heartbeats leave it alone.
    await a.register("rtc_3", "acme")
    await b.register("rtc_3", "acme")
    assert await a.heartbeat() == 1
    assert await a.where("rtc_3") == Location("gw-b", "http://10.0.0.2:8000", "acme")
    assert await a.unregister("rtc_3") is False
    assert (await a.where("rtc_3") or Location("", "", "")).replica == "gw-b"


async def test_registry_entries_expire_without_heartbeats(
    replicas: Factory, admin: aioredis.Redis, prefix: str
) -> None:
    a = replicas(session_ttl_s=1.0)
    b = replicas()
    await a.register("call_1", "acme")
    assert 0 < await admin.pttl(f"{prefix}reg:call_1") <= 1000
    await a.aclose()
    await eventually(lambda: _nowhere(b, "call_1"), "an unheartbeated entry expired")


# -- revocations --------------------------------------------------------------------------


async def test_revocation_reaches_every_other_replica(replicas: Factory) -> None:
    a, b, c = replicas(), replicas(), replicas()
    heard_b: asyncio.Queue[str] = asyncio.Queue()
    heard_c: list[str] = []

    async def on_c(key_id: str) -> None:  # a coroutine callback works too
        heard_c.append(key_id)

    watch = await b.watch_revocations(heard_b.put_nowait)
    await c.watch_revocations(on_c)
    assert await a.publish_revocation("key_7") == 2
    assert await asyncio.wait_for(heard_b.get(), WAIT_S) == "key_7"
    await eventually(_async(lambda: heard_c == ["key_7"]), "the second watcher heard it")
    await watch.stop()
    assert not watch.running
    assert await a.publish_revocation("key_8") == 1
    await eventually(_async(lambda: heard_c == ["key_7", "key_8"]), "the watch left goes on")
    assert heard_b.empty()


async def test_a_revocation_watch_resubscribes_after_a_lost_connection(
    replicas: Factory, admin: aioredis.Redis
) -> None:
    a, b = replicas(), replicas()
    heard: asyncio.Queue[str] = asyncio.Queue()

    def flaky(key_id: str) -> None:
        heard.put_nowait(key_id)
        if key_id == "boom":
            raise RuntimeError("a callback's failure is logged, not fatal")

    await b.watch_revocations(flaky)
    await a.publish_revocation("boom")
    assert await asyncio.wait_for(heard.get(), WAIT_S) == "boom"
    await admin.client_kill_filter(_type="pubsub")  # Redis drops every subscriber
    assert await asyncio.wait_for(heard.get(), WAIT_S) == RESYNC
    await eventually(lambda: _published(a, "key_3"), "the watcher subscribed again")
    assert await asyncio.wait_for(heard.get(), WAIT_S) == "key_3"


async def _published(shared: SharedState, key_id: str) -> bool:
    return await shared.publish_revocation(key_id) > 0


def _async(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def run() -> bool:
        return check()

    return run


# -- Redis unavailable --------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_a_closed_port_is_unavailable_at_once(replicas: Factory) -> None:
    shared = replicas(url=f"redis://127.0.0.1:{_free_port()}/0", timeout_s=0.5)
    calls: list[Callable[[], Awaitable[object]]] = [
        shared.ping,
        lambda: shared.request("key_1", 5),
        lambda: shared.open_session("s1", "key_1", "acme", 3),
        lambda: shared.register("s1", "acme"),
        lambda: shared.where("s1"),
        lambda: shared.publish_revocation("key_1"),
        lambda: shared.watch_revocations(lambda key_id: None),
    ]
    for call in calls:
        start = time.monotonic()
        with pytest.raises(SharedStateUnavailable):
            await call()
        assert time.monotonic() - start < 10
    assert shared.held == frozenset()


class PrivateRedis:
    """A redis-server of one test's own, on a fixed loopback port, to stop and start again."""

    def __init__(self, binary: str, workdir: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.workdir, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + WAIT_S
        while True:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                s.sendall(b"PING\r\n")
                if s.recv(16).startswith(b"+PONG"):
                    return
            assert self.process.poll() is None, "redis-server exited"
            assert time.monotonic() < deadline, "redis-server did not answer"
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)


@pytest.fixture
def private_redis() -> Iterator[PrivateRedis]:
    binary = shutil.which("redis-server")
    if binary is None:
        _need("no redis-server on PATH: .ci/redis.sh installs Debian's")
    assert binary is not None
    with tempfile.TemporaryDirectory(prefix="parley-redis-test-") as workdir:
        server = PrivateRedis(binary, workdir)
        server.start()
        try:
            yield server
        finally:
            server.kill()


async def test_redis_going_away_and_coming_back(
    replicas: Factory, private_redis: PrivateRedis
) -> None:
    a = replicas(url=private_redis.url, timeout_s=0.5, session_ttl_s=1.5)
    b = replicas(url=private_redis.url, timeout_s=0.5, session_ttl_s=1.5)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await b.watch_revocations(heard.put_nowait)
    assert await a.open_session("s1", "key_1", "acme", 1)
    await a.register("s1", "acme")
    assert (await a.request("key_1", 10))[0]

    private_redis.kill()
    for call in (
        a.ping,
        lambda: a.request("key_1", 10),
        lambda: b.open_session("s2", "key_1", "acme", 1),
        lambda: b.where("s1"),
    ):
        start = time.monotonic()
        with pytest.raises(SharedStateUnavailable):
            await call()
        assert time.monotonic() - start < 10
    await asyncio.sleep(1.0)  # heartbeats fail meanwhile, quietly

    # A fresh Redis (no persistence: empty) on the same port: the heartbeats put the live
    # session and registry entry back, and the watcher hears of the gap.
    private_redis.start()
    assert await asyncio.wait_for(heard.get(), WAIT_S) == RESYNC
    await eventually(lambda: _count_is(b, "key_1", 1), "the live session counted again")
    await eventually(_where_is(b, "s1", a.replica_id), "the registry entry back")
    assert await b.open_session("s2", "key_1", "acme", 1) is Admission.KEY_LIMIT
    await a.close_session("s1")
    assert await b.open_session("s2", "key_1", "acme", 1)


def _where_is(shared: SharedState, entry_id: str, replica: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        where = await shared.where(entry_id)
        return where is not None and where.replica == replica

    return check


async def test_a_hung_redis_times_out_and_recovers(
    replicas: Factory, private_redis: PrivateRedis
) -> None:
    a = replicas(url=private_redis.url, timeout_s=0.5)
    assert await a.ping() >= 0
    private_redis.signal(signal.SIGSTOP)  # accepts nothing, answers nothing
    try:
        for call in (a.ping, lambda: a.request("key_1", 5)):
            start = time.monotonic()
            with pytest.raises(SharedStateUnavailable):
                await call()
            assert time.monotonic() - start < 10
    finally:
        private_redis.signal(signal.SIGCONT)
    await eventually(_answers(a), "Redis answering again")
    assert (await a.request("key_1", 5))[0]


def _answers(shared: SharedState) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            await shared.ping()
        except SharedStateUnavailable:
            return False
        return True

    return check


# -- keys ---------------------------------------------------------------------------------


async def test_everything_is_under_the_prefix_and_nothing_outlives_its_use(
    replicas: Factory, admin: aioredis.Redis, prefix: str
) -> None:
    a = replicas(session_ttl_s=1.0, window_s=1.0)
    await a.request("key_1", 5)
    for i in range(3):
        assert await a.open_session(f"s{i}", "key_1", "acme", None)
    await a.register("s0", "acme")
    assert sorted([k async for k in admin.scan_iter(match=f"{prefix}*")]) == [
        f"{prefix}reg:s0",
        f"{prefix}rl:key_1",
        f"{prefix}sk:key_1",
        f"{prefix}st:acme",
    ]
    for key in (f"{prefix}rl:key_1", f"{prefix}sk:key_1", f"{prefix}st:acme"):
        assert 0 < await admin.pttl(key) <= 1000  # every key expires on its own
    for i in range(3):
        await a.close_session(f"s{i}")
    await a.unregister("s0")
    assert a.held == frozenset()
    await eventually(_no_keys(admin, prefix), "every key of the prefix gone")


def _no_keys(admin: aioredis.Redis, prefix: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not [k async for k in admin.scan_iter(match=f"{prefix}*")]

    return check
