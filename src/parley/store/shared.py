"""State that many gateway replicas share, in Redis: limits, live sessions, revocations.

One ``parley serve`` keeps its per-key limits in memory (``parley.server.auth.Limiter``);
replicas of a scaled deployment share them through a :class:`SharedState` each:

- **request rate** per key is one sliding window across all replicas (:meth:`request`,
  :meth:`remaining`): a sorted set of the key's requests in the last ``window_s`` seconds,
  trimmed on each call, so it never holds more than the limit's worth of entries;
- **concurrent sessions** per key and per tenant count every replica's sessions
  (:meth:`open_session`, :meth:`close_session`). Each session is an entry with a deadline,
  not a bare counter: the replica that holds it renews it every ``session_ttl_s / 3`` seconds
  (a background task, started on first use), so a replica that dies (kill -9) stops counting
  within ``session_ttl_s`` of its last heartbeat, with nobody cleaning up after it;
- the **registry** says which replica holds a live session or call (:meth:`register`,
  :meth:`where`, :meth:`unregister`): replica id, its base URL, tenant; entries expire like
  sessions unless renewed by the same heartbeat;
- **revocations** go out over pub/sub (:meth:`publish_revocation`,
  :meth:`watch_revocations`): every replica's watcher hears a key revoked anywhere at once.
  Pub/sub delivers at most once: a watcher that lost its connection is handed :data:`RESYNC`
  when it is subscribed again, and should then check its live keys against the database,
  which stays the source of truth (keep a slow ``KeyStore.is_active`` poll as the backstop).

Check-and-add steps are Lua scripts, atomic in Redis, timed by Redis's clock (``TIME``).
**Redis unreachable** (refused, reset, timed out, read-only during a failover) raises
:class:`SharedStateUnavailable`, within ``3 * timeout_s`` at worst: a gateway refuses new
sessions with 503 and keeps the ones it has (heartbeats retry quietly, and renew entries that
expired during the outage, so the counts are right again once Redis is back).

Keys all start with ``prefix`` (default ``parley:``): ``{prefix}rl:{key}`` (request window),
``{prefix}sk:{key}`` / ``{prefix}st:{tenant}`` (sessions by key / tenant, members the session
ids, scores their deadlines in ms), ``{prefix}reg:{id}`` (a registry entry, a hash) and the
channel ``{prefix}revoked``. One Redis (or a Sentinel-kept primary) is assumed; on Redis
Cluster give a prefix with a hash tag, e.g. ``{parley}:``, so the scripts' keys share a slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff

__all__ = [
    "RESYNC",
    "Admission",
    "Location",
    "RevocationWatch",
    "SharedState",
    "SharedStateUnavailable",
]

log = logging.getLogger(__name__)

# Handed to a revocation watcher after it (re)subscribed following a lost connection: some
# revocations may have been missed, so check every live key against the database.
RESYNC = "*"

# Failures that mean "Redis can't be used now" (refused, reset, auth, loading, timed out, a
# replica during a failover), as opposed to a bug (a script error).
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    *(rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, rexc.MasterDownError),
    *(rexc.TryAgainError, OSError, TimeoutError),
)

_HEARTBEAT_CHUNK = 500  # sessions (or registry entries) renewed per script call

# KEYS: the key's window. ARGV: limit, window ms, a unique member. Returns {allowed, remaining,
# ms until the oldest request leaves the window}.
_REQUEST = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
if count >= limit then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  local reset = window
  if oldest[2] then reset = tonumber(oldest[2]) + window - now end
  return {0, 0, reset}
end
redis.call('ZADD', KEYS[1], now, ARGV[3])
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {1, limit - count - 1, tonumber(oldest[2]) + window - now}
"""

# KEYS: the key's window. ARGV: window ms. Returns {requests in the window, ms until the oldest
# leaves it}. Read-only.
_REMAINING = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
local live = redis.call('ZRANGEBYSCORE', KEYS[1], now - window, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local count = redis.call('ZCOUNT', KEYS[1], now - window, '+inf')
local reset = 0
if live[2] then reset = tonumber(live[2]) + window - now end
return {count, reset}
"""

# Shared by the session scripts: the time, and renewing a sorted set's own expiry so it
# outlives its latest deadline (never shortened by a replica configured with a shorter ttl).
_SESSION_PRELUDE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, ttl)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
end
"""

# KEYS: sessions of the key, sessions of the tenant. ARGV: session id, ttl ms, key limit,
# tenant limit (-1: none). Returns 0 (opened, or already open: renewed), 1 (the key is at its
# limit) or 2 (the tenant is).
_OPEN = (
    _SESSION_PRELUDE
    + """
local sid = ARGV[1]
local ttl = tonumber(ARGV[2])
local key_limit = tonumber(ARGV[3])
local tenant_limit = tonumber(ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], sid) then
  if key_limit >= 0 and redis.call('ZCARD', KEYS[1]) >= key_limit then return 1 end
  if tenant_limit >= 0 and redis.call('ZCARD', KEYS[2]) >= tenant_limit then return 2 end
end
redis.call('ZADD', KEYS[1], now + ttl, sid)
redis.call('ZADD', KEYS[2], now + ttl, sid)
keep(KEYS[1], ttl)
keep(KEYS[2], ttl)
return 0
"""
)

# KEYS: pairs (sessions of the key, sessions of the tenant), one per session. ARGV: ttl ms,
# then the session ids. Renews each deadline, adding back an entry that expired meanwhile
# (a Redis outage, a stalled replica): a live session counts again, whatever the limit.
_HEARTBEAT = (
    _SESSION_PRELUDE
    + """
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  local by_key, by_tenant = KEYS[2 * i - 3], KEYS[2 * i - 2]
  redis.call('ZADD', by_key, now + ttl, ARGV[i])
  redis.call('ZADD', by_tenant, now + ttl, ARGV[i])
  keep(by_key, ttl)
  keep(by_tenant, ttl)
end
return #ARGV - 1
"""
)

# KEYS: registry entries. ARGV: ttl ms, then (replica, url, tenant) of each. Renews an entry
# of that replica, puts back one that expired meanwhile, leaves another replica's alone.
_RENEW = """
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  local replica = ARGV[3 * i - 1]
  local owner = redis.call('HGET', KEYS[i], 'replica')
  if not owner then
    redis.call('HSET', KEYS[i], 'replica', replica, 'url', ARGV[3 * i], 'tenant', ARGV[3 * i + 1])
  end
  if not owner or owner == replica then redis.call('PEXPIRE', KEYS[i], ttl) end
end
return #KEYS
"""

# KEYS: a registry entry. ARGV: the replica that may remove it. Returns 1 if removed.
_UNREGISTER = """
local owner = redis.call('HGET', KEYS[1], 'replica')
if owner == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class SharedStateUnavailable(Exception):
    """Redis could not be reached or used in time: refuse new work (503), keep running work."""


class Admission(enum.Enum):
    """What :meth:`SharedState.open_session` decided; true only for :attr:`OPENED`."""

    OPENED = "opened"
    KEY_LIMIT = "key_limit"  # the key holds its limit of sessions
    TENANT_LIMIT = "tenant_limit"  # the tenant does

    def __bool__(self) -> bool:
        return self is Admission.OPENED


@dataclass(frozen=True, slots=True)
class Location:
    """Where a live session or call is held: the replica, its base URL, and the tenant."""

    replica: str
    url: str
    tenant: str


class RevocationWatch:
    """A running subscription to revocations; :meth:`stop` ends it (so does ``aclose``)."""

    def __init__(self, task: asyncio.Task[None]) -> None:
        self._task = task

    @property
    def running(self) -> bool:
        return not self._task.done()

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class SharedState:
    """One replica's handle on the shared state. Create with :meth:`from_url`, close with
    :meth:`aclose`. Safe for many concurrent tasks of one event loop.

    ``replica_id`` and ``replica_url`` name this replica in the registry. ``timeout_s`` bounds
    connecting and each reply; ``session_ttl_s`` is how long a session or registry entry
    outlives its last heartbeat (heartbeats every third of it); ``window_s`` is the request
    rate window (a minute: limits are per minute; tests shorten it).
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "parley:",
        replica_id: str | None = None,
        replica_url: str = "",
        timeout_s: float = 1.0,
        session_ttl_s: float = 15.0,
        window_s: float = 60.0,
    ) -> None:
        if session_ttl_s <= 0 or window_s <= 0 or timeout_s <= 0:
            raise ValueError("session_ttl_s, window_s and timeout_s must be positive")
        self._redis = client
        self.prefix = prefix
        self.replica_id = replica_id or f"replica-{secrets.token_hex(4)}"
        self.replica_url = replica_url
        self.timeout_s = timeout_s
        self.session_ttl_s = session_ttl_s
        self.window_s = window_s
        self._ttl_ms = max(1, round(session_ttl_s * 1000))
        self._window_ms = max(1, round(window_s * 1000))
        self._request = client.register_script(_REQUEST)
        self._remaining = client.register_script(_REMAINING)
        self._open = client.register_script(_OPEN)
        self._heartbeat = client.register_script(_HEARTBEAT)
        self._renew = client.register_script(_RENEW)
        self._unregister = client.register_script(_UNREGISTER)
        self._sessions: dict[str, tuple[str, str]] = {}  # id -> (key id, tenant)
        self._registered: dict[str, Location] = {}
        self._heartbeats: asyncio.Task[None] | None = None
        # Held while a heartbeat is in flight: a close waits for it, or the heartbeat could
        # put back (for a ttl) the entry the close just removed.
        self._beating = asyncio.Lock()
        self._watches: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_url(cls, url: str, *, max_connections: int = 32, **options: Any) -> SharedState:
        """A handle on the Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``), with
        the constructor's ``options``; no connection is made until first use. At most
        ``max_connections`` at once (more concurrent calls wait for one, within their bound)."""
        timeout_s = float(options.get("timeout_s", 1.0))
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            max_connections=max_connections,
            timeout=timeout_s,  # waiting for a free connection
            socket_connect_timeout=timeout_s,
            socket_timeout=timeout_s,
            socket_keepalive=True,
            health_check_interval=30,
            decode_responses=True,
            # One retry, at once, on a fresh connection (a pooled one Redis dropped); a timeout
            # is not retried, so a hung Redis costs timeout_s (plus a reconnect's) per call.
            retry=Retry(ConstantBackoff(0), 1, supported_errors=(rexc.ConnectionError,)),
        )
        return cls(aioredis.Redis.from_pool(pool), **options)  # closing it closes the pool

    # -- request rate ------------------------------------------------------------------------

    async def request(self, key_id: str, limit_per_minute: int) -> tuple[bool, int, float]:
        """Count one request of ``key_id`` against ``limit_per_minute`` (per ``window_s``):
        (allowed, remaining in the window, seconds until the oldest request leaves it).
        A refused request is not counted."""
        member = f"{time.time_ns()}-{secrets.token_hex(4)}"
        async with self._bounded():
            allowed, remaining, reset_ms = await self._request(
                keys=[self._key("rl", key_id)],
                args=[max(0, limit_per_minute), self._window_ms, member],
            )
        return bool(allowed), int(remaining), max(0.0, int(reset_ms) / 1000)

    async def remaining(self, key_id: str, limit_per_minute: int) -> tuple[int, float]:
        """(requests left in the window, seconds until the oldest counted one leaves it),
        counting nothing."""
        async with self._bounded():
            count, reset_ms = await self._remaining(
                keys=[self._key("rl", key_id)], args=[self._window_ms]
            )
        return max(0, limit_per_minute - int(count)), max(0.0, int(reset_ms) / 1000)

    # -- concurrent sessions ---------------------------------------------------------------

    async def open_session(
        self,
        session_id: str,
        key_id: str,
        tenant: str,
        key_limit: int | None,
        tenant_limit: int | None = None,
    ) -> Admission:
        """Count a session of ``key_id`` and ``tenant`` if both are under their limits (None:
        no limit; the session is counted all the same). ``session_id`` is any id unique to
        this session (a fresh one per admission will do). Opening an open id renews it. The
        session is heartbeated by this handle until :meth:`close_session`."""
        async with self._bounded():
            code = await self._open(
                keys=[self._key("sk", key_id), self._key("st", tenant)],
                args=[
                    session_id,
                    self._ttl_ms,
                    -1 if key_limit is None else max(0, key_limit),
                    -1 if tenant_limit is None else max(0, tenant_limit),
                ],
            )
        admission = (Admission.OPENED, Admission.KEY_LIMIT, Admission.TENANT_LIMIT)[int(code)]
        if admission:
            self._sessions[session_id] = (key_id, tenant)
            self._start_heartbeats()
        return admission

    async def close_session(self, session_id: str) -> None:
        """Stop counting a session this handle opened (a no-op for one it did not). It stops
        being heartbeated first, so even if Redis is unreachable now, it expires in time."""
        held = self._sessions.pop(session_id, None)
        if held is None:
            return
        key_id, tenant = held
        async with self._bounded():
            async with self._beating:
                pass
            pipe = self._redis.pipeline(transaction=True)
            pipe.zrem(self._key("sk", key_id), session_id)
            pipe.zrem(self._key("st", tenant), session_id)
            await pipe.execute()

    async def session_count(self, *, key_id: str | None = None, tenant: str | None = None) -> int:
        """Live sessions (across replicas) of one key or one tenant."""
        if (key_id is None) == (tenant is None):
            raise ValueError("give one of key_id and tenant")
        key = self._key("sk", key_id) if key_id is not None else self._key("st", tenant or "")
        async with self._bounded():
            t = await self._redis.time()
            now_ms = int(t[0]) * 1000 + int(t[1]) // 1000
            return int(await self._redis.zcount(key, f"({now_ms}", "+inf"))

    @property
    def held(self) -> frozenset[str]:
        """The sessions and registry entries this handle heartbeats."""
        return frozenset(self._sessions) | frozenset(self._registered)

    # -- registry --------------------------------------------------------------------------

    async def register(
        self, entry_id: str, tenant: str, *, replica: str | None = None, url: str | None = None
    ) -> None:
        """Record that this replica (or ``replica`` at ``url``) holds session or call
        ``entry_id``; heartbeated by this handle until :meth:`unregister`."""
        where = Location(
            self.replica_id if replica is None else replica,
            self.replica_url if url is None else url,
            tenant,
        )
        key = self._key("reg", entry_id)
        async with self._bounded():
            pipe = self._redis.pipeline(transaction=True)
            pipe.hset(key, mapping={"replica": where.replica, "url": where.url, "tenant": tenant})
            pipe.pexpire(key, self._ttl_ms)
            await pipe.execute()
        self._registered[entry_id] = where
        self._start_heartbeats()

    async def where(self, entry_id: str) -> Location | None:
        """Where a live session or call is held, or None (unknown, ended, or its replica
        stopped heartbeating it)."""
        async with self._bounded():
            fields = await self._redis.hgetall(self._key("reg", entry_id))
        if not fields:
            return None
        return Location(*(str(fields.get(name, "")) for name in ("replica", "url", "tenant")))

    async def unregister(self, entry_id: str) -> bool:
        """Remove this replica's registry entry (not another replica's); True if removed."""
        where = self._registered.pop(entry_id, None)
        owner = where.replica if where is not None else self.replica_id
        async with self._bounded():
            async with self._beating:
                pass
            removed = await self._unregister(keys=[self._key("reg", entry_id)], args=[owner])
        return bool(removed)

    # -- heartbeats ------------------------------------------------------------------------

    async def heartbeat(self, ids: Iterable[str] | None = None) -> int:
        """Renew this handle's sessions and registry entries (all, or those in ``ids``) for
        another ``session_ttl_s``, in one round trip; returns how many were renewed. Runs by
        itself every ``session_ttl_s / 3``: call it only to renew at a time of your own."""
        wanted = None if ids is None else set(ids)
        async with self._beating, self._bounded():
            sessions = [(s, h) for s, h in self._sessions.items() if _chosen(s, wanted)]
            entries = [(e, w) for e, w in self._registered.items() if _chosen(e, wanted)]
            if not sessions and not entries:
                return 0
            # EVALSHA by hand: a pipeline given the scripts would ask SCRIPT EXISTS first, a
            # second round trip each time; a Redis that lost its scripts gets them loaded.
            for attempt in (1, 2):
                pipe = self._redis.pipeline(transaction=False)
                for start in range(0, len(sessions), _HEARTBEAT_CHUNK):
                    chunk = dict(sessions[start : start + _HEARTBEAT_CHUNK])
                    keys: list[str] = []
                    for key_id, tenant in chunk.values():
                        keys += [self._key("sk", key_id), self._key("st", tenant)]
                    pipe.evalsha(self._heartbeat.sha, len(keys), *keys, self._ttl_ms, *chunk)
                for start in range(0, len(entries), _HEARTBEAT_CHUNK):
                    part = entries[start : start + _HEARTBEAT_CHUNK]
                    keys = [self._key("reg", entry_id) for entry_id, _ in part]
                    fields = [f for _, w in part for f in (w.replica, w.url, w.tenant)]
                    pipe.evalsha(self._renew.sha, len(keys), *keys, self._ttl_ms, *fields)
                try:
                    await pipe.execute()
                    break
                except rexc.NoScriptError:
                    if attempt == 2:
                        raise
                    for script in (_HEARTBEAT, _RENEW):
                        await self._redis.script_load(script)
            return len(sessions) + len(entries)

    def _start_heartbeats(self) -> None:
        if self._closed:
            return
        if self._heartbeats is None or self._heartbeats.done():
            self._heartbeats = asyncio.create_task(self._beat(), name="shared-state-heartbeat")

    async def _beat(self) -> None:
        every = self.session_ttl_s / 3
        while not self._closed:
            await asyncio.sleep(every)
            try:
                await self.heartbeat()
            except SharedStateUnavailable as exc:
                log.warning("shared state heartbeat failed (will retry): %s", exc)
            except Exception:  # a bug must not stop the heartbeats of the live sessions
                log.exception("shared state heartbeat failed")

    # -- revocations -----------------------------------------------------------------------

    async def publish_revocation(self, key_id: str) -> int:
        """Tell every replica's watcher that ``key_id`` was revoked; returns how many
        watchers heard it."""
        async with self._bounded():
            return int(await self._redis.publish(self._key("revoked"), key_id))

    async def watch_revocations(
        self, callback: Callable[[str], Awaitable[None] | None]
    ) -> RevocationWatch:
        """Call ``callback(key_id)`` for each revocation published from now on (returns once
        subscribed; raises :class:`SharedStateUnavailable` if it can't be). A lost connection
        is retried in the background; once subscribed again, ``callback(RESYNC)``. Errors in
        the callback are logged, and the watch goes on."""
        pubsub = await self._subscribe()
        task = asyncio.create_task(self._listen(pubsub, callback), name="shared-state-revoked")
        self._watches.add(task)
        task.add_done_callback(self._watches.discard)
        return RevocationWatch(task)

    async def _subscribe(self) -> aioredis.client.PubSub:
        pubsub = self._redis.pubsub()
        try:
            async with self._bounded():
                await pubsub.subscribe(self._key("revoked"))
                # The confirmation: from here on, nothing published is missed.
                while True:
                    message = await pubsub.get_message(timeout=self.timeout_s)
                    if message is None:
                        raise TimeoutError("no subscription confirmation from Redis")
                    if message["type"] == "subscribe":
                        return pubsub
        except BaseException:
            await _quietly(pubsub.aclose())
            raise

    async def _listen(
        self, pubsub: aioredis.client.PubSub, callback: Callable[[str], Awaitable[None] | None]
    ) -> None:
        backoff = 0.1
        try:
            while True:
                try:
                    message = await pubsub.get_message(timeout=self.timeout_s)
                except _UNAVAILABLE as exc:
                    log.warning("revocation watch lost Redis (%s); resubscribing", exc)
                    await _quietly(pubsub.aclose())
                    while True:
                        await asyncio.sleep(backoff)
                        backoff = min(backoff * 2, 2.0)
                        try:
                            pubsub = await self._subscribe()
                            break
                        except SharedStateUnavailable:
                            continue
                    backoff = 0.1
                    await _deliver(callback, RESYNC)
                    continue
                if message is None:
                    continue
                if message["type"] == "message":
                    await _deliver(callback, str(message["data"]))
                elif message["type"] == "subscribe":
                    # redis-py reconnected by itself and subscribed again: there was a gap.
                    await _deliver(callback, RESYNC)
        finally:
            await _quietly(pubsub.aclose())

    # -- health and lifetime ---------------------------------------------------------------

    async def ping(self) -> float:
        """Round trip to Redis, in seconds; raises :class:`SharedStateUnavailable`."""
        start = time.perf_counter()
        async with self._bounded():
            await self._redis.ping()
        return time.perf_counter() - start

    async def aclose(self) -> None:
        """Stop heartbeats and watches and close the connections. Sessions and registry
        entries not closed first are left to expire (as if this replica had died)."""
        self._closed = True
        tasks = [t for t in (self._heartbeats, *self._watches) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._redis.aclose()

    # -- internals -------------------------------------------------------------------------

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @contextlib.asynccontextmanager
    async def _bounded(self) -> AsyncIterator[None]:
        """A Redis call that fails as :class:`SharedStateUnavailable`, within a hard bound
        (connect plus retry plus reply) whatever the socket timeouts did."""
        try:
            async with asyncio.timeout(self.timeout_s * 3):
                yield
        except _UNAVAILABLE as exc:
            raise SharedStateUnavailable(f"Redis unavailable: {type(exc).__name__}: {exc}") from exc


async def _deliver(callback: Callable[[str], Awaitable[None] | None], key_id: str) -> None:
    try:
        result = callback(key_id)
        if inspect.isawaitable(result):
            await result
    except Exception:
        log.exception("revocation callback failed for %s", key_id)


def _chosen(entry_id: str, wanted: set[str] | None) -> bool:
    return wanted is None or entry_id in wanted


async def _quietly(closing: Awaitable[Any]) -> None:
    with contextlib.suppress(Exception):
        await closing
