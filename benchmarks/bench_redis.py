"""Redis round trips and latency of parley's shared state (parley.store.shared), per operation.

Against a real Redis on loopback: $PARLEY_TEST_REDIS_URL or --url, else a private
``redis-server`` (from PATH; ``.ci/redis.sh`` installs Debian's) started on a free port with no
persistence and stopped at the end. Two handles ("replicas") share it.

Printed, as a Markdown table: for each operation, the round trips it takes (writes to a Redis
connection, counted in the client; a pipeline is one) and its latency p50/p99 over ``--n``
sequential calls; then what a gateway pays per session (handshake, open, close) and per turn;
a burst of concurrent ``open_session`` calls; heartbeating ``--sessions`` sessions in one go;
and how long a revocation takes to reach another replica's watcher.

python benchmarks/bench_redis.py [--url redis://127.0.0.1:6379/0] [--n 2000] [--sessions 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection

from parley.store.shared import SharedState

# Round trips: every write of commands to a connection (a pipeline writes all of its commands
# at once), from every handle in this process.
ROUND_TRIPS = 0
_send = AbstractConnection.send_packed_command


async def _counting_send(self: AbstractConnection, *args: Any, **kwargs: Any) -> None:
    global ROUND_TRIPS
    ROUND_TRIPS += 1
    await _send(self, *args, **kwargs)


AbstractConnection.send_packed_command = _counting_send  # type: ignore[method-assign]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(url: str | None) -> Iterator[tuple[str, str]]:
    """(URL, what it is): the given one, or a private redis-server for this run."""
    if url:
        yield url, "given"
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("no redis-server on PATH and no --url: run .ci/redis.sh first")
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="parley-bench-redis-") as workdir:
        server = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
             "--appendonly", "no", "--dir", workdir],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            version = subprocess.run(
                [binary, "--version"], capture_output=True, text=True, check=True
            ).stdout.split()[2]
            for _ in range(200):
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1):
                        break
                except OSError:
                    time.sleep(0.05)
            yield f"redis://127.0.0.1:{port}/0", f"private redis-server {version}"
        finally:
            server.terminate()
            server.wait()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, what: str, trips: float, latencies_s: list[float], server_us: float) -> None:
        ms = [s * 1000 for s in latencies_s]
        p50, p99 = f"{pct(ms, 0.5):.3f}", f"{pct(ms, 0.99):.3f}"
        self.rows.append((what, f"{trips:g}", p50, p99, f"{server_us:.1f}"))

    def print(self) -> None:
        print("| operation | round trips | p50 ms | p99 ms | Redis CPU µs |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for row in self.rows:
            print("| " + " | ".join(row) + " |")


async def server_usec(admin: aioredis.Redis) -> float:
    """Redis's own time in commands (INFO commandstats) since the last CONFIG RESETSTAT."""
    stats = await admin.info("commandstats")
    return sum(
        float(v["usec"]) for k, v in stats.items() if k not in ("cmdstat_config", "cmdstat_info")
    )


async def timed(
    admin: aioredis.Redis, n: int, call: Callable[[int], Awaitable[object]]
) -> tuple[float, list[float], float]:
    """(round trips per call, latency of each, Redis CPU µs per call) over n sequential calls,
    after a warm-up."""
    for i in range(min(20, n)):
        await call(-1 - i)  # loads the scripts, fills the pool
    await admin.config_resetstat()
    before = ROUND_TRIPS
    latencies = []
    for i in range(n):
        start = time.perf_counter()
        await call(i)
        latencies.append(time.perf_counter() - start)
    trips = (ROUND_TRIPS - before) / n
    return trips, latencies, await server_usec(admin) / n


async def run(url: str, n: int, sessions: int) -> Table:
    prefix = f"parley-bench-{uuid.uuid4().hex[:8]}:"
    a = SharedState.from_url(url, prefix=prefix, replica_id="a", replica_url="http://a:8000")
    b = SharedState.from_url(url, prefix=prefix, replica_id="b", replica_url="http://b:8000")
    table = Table()
    admin = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        table.add("ping", *await timed(admin, n, lambda i: a.ping()))
        table.add(
            "request (rate limit, under it)",
            *await timed(admin, n, lambda i: a.request("k", 10**9)),
        )
        await a.request("full", 1)
        table.add("request (refused)", *await timed(admin, n, lambda i: b.request("full", 1)))
        table.add("remaining", *await timed(admin, n, lambda i: a.remaining("k", 10**9)))
        table.add(
            "open_session",
            *await timed(
                admin, n, lambda i: a.open_session(f"s{i}", "k", "t", None, tenant_limit=None)
            ),
        )
        table.add("close_session", *await timed(admin, n, lambda i: a.close_session(f"s{i}")))
        table.add("register", *await timed(admin, n, lambda i: a.register(f"s{i}", "t")))
        table.add("where (other replica)", *await timed(admin, n, lambda i: b.where(f"s{i}")))
        table.add("unregister", *await timed(admin, n, lambda i: a.unregister(f"s{i}")))
        table.add(
            "publish_revocation", *await timed(admin, n, lambda i: a.publish_revocation("none"))
        )

        # What a gateway pays per session: the handshake's rate-limit check, the admission,
        # the registry entry; at the end, both removed.
        async def session_open(i: int) -> None:
            await a.request("k", 10**9)
            await a.open_session(f"life{i}", "k", "t", 10**6, tenant_limit=10**6)
            await a.register(f"life{i}", "t")

        async def session_close(i: int) -> None:
            await a.close_session(f"life{i}")
            await a.unregister(f"life{i}")

        table.add(
            "**session open** (request + open_session + register)",
            *await timed(admin, n, session_open),
        )
        table.add(
            "**session close** (close_session + unregister)", *await timed(admin, n, session_close)
        )

        # A burst of concurrent admissions over both replicas (each call's latency under load).
        burst = 200
        before = ROUND_TRIPS
        latencies: list[float] = []

        async def admit(i: int) -> None:
            start = time.perf_counter()
            await (a, b)[i % 2].open_session(f"burst{i}", "kb", "tb", 50)
            latencies.append(time.perf_counter() - start)

        await asyncio.gather(*(admit(-1 - i) for i in range(burst)))  # fills both pools
        before = ROUND_TRIPS
        latencies.clear()
        await admin.config_resetstat()
        start = time.perf_counter()
        await asyncio.gather(*(admit(i) for i in range(burst)))
        wall = time.perf_counter() - start
        usec = await server_usec(admin) / burst
        table.add(
            f"open_session, {burst} at once on 2 replicas",
            (ROUND_TRIPS - before) / burst,
            latencies,
            usec,
        )
        what, *cells = table.rows[-1]
        table.rows[-1] = (f"{what} ({burst / wall:.0f}/s)", *cells)

        # Heartbeats: one pipeline for every session and registry entry a replica holds.
        c = SharedState.from_url(url, prefix=prefix, replica_id="c")
        try:
            for i in range(sessions):
                await c.open_session(f"hb{i}", f"key{i % 50}", f"tenant{i % 5}", None)
                await c.register(f"hb{i}", f"tenant{i % 5}")
            rounds = max(5, n // 100)
            table.add(
                f"heartbeat of {sessions} sessions + {sessions} registry entries",
                *await timed(admin, rounds, lambda i: c.heartbeat()),
            )
        finally:
            await c.aclose()

        # Revocation: publish on a, heard by b's watcher.
        heard: asyncio.Queue[float] = asyncio.Queue()
        await b.watch_revocations(lambda key_id: heard.put_nowait(time.perf_counter()))
        delays = []
        await admin.config_resetstat()
        for _ in range(min(n, 500)):
            start = time.perf_counter()
            await a.publish_revocation("key_x")
            delays.append(await asyncio.wait_for(heard.get(), 10) - start)
        usec = await server_usec(admin) / len(delays)
        table.add("revocation: publish on A -> B's watcher called", 1, delays, usec)
    finally:
        await a.aclose()
        await b.aclose()
        keys = [k async for k in admin.scan_iter(match=f"{prefix}*")]
        if keys:
            await admin.delete(*keys)
        await admin.aclose()
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default=os.environ.get("PARLEY_TEST_REDIS_URL"))
    parser.add_argument("--n", type=int, default=2000, help="calls per operation")
    parser.add_argument("--sessions", type=int, default=1000, help="sessions heartbeated at once")
    args = parser.parse_args()
    with redis_server(args.url) as (url, what):
        print(f"Redis: {what} at {url}; {args.n} sequential calls per operation\n")
        table = asyncio.run(run(url, args.n, args.sessions))
        table.print()
    print(
        "\nPer turn: no Redis call on the turn's path (limits are checked at the handshake,"
        " revocations are pushed); rate_limits.updated costs one `remaining` if read fresh."
        "\nIn the background, each replica heartbeats all it holds in one round trip every"
        " session_ttl_s / 3 (5 s by default), whatever the number of sessions."
    )


if __name__ == "__main__":
    main()
