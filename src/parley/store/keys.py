"""Tenants, API keys and ephemeral client secrets, in the embedded database.

Keys are random 40-character tokens (``sk-parley-...``); only their SHA-256 is stored, so a
database leak reveals no usable key (the tokens carry ~238 bits of entropy, so a fast hash is
enough: there is nothing to brute-force). A key belongs to one tenant and carries its limits.
Ephemeral client secrets (``ek_...``) are minted by a key, bound to a Realtime session
configuration and an expiry, and open exactly one connection.

**Revocation and the cache.** Keys are revoked by another process as often as by this one
(``parley keys revoke`` next to a running server), so the store learns of a revocation from the
database itself: :meth:`KeyStore.generation` is a count of the keys and of the revoked ones,
read from the database by any process on SQLite and PostgreSQL alike (keys are never deleted and
a revocation is never undone, so the counts only grow). Lookups of active keys
(:meth:`KeyStore.authenticate`, :meth:`KeyStore.is_active`) are cached until the generation
changes, so a server checking its open sessions every few seconds costs one small aggregate over
``api_keys`` per check, and a revocation is seen by the next lookup. The cache is bounded and
holds no token, only hashes and key records.

**Threads.** Every method may block on the database (a writer in another process holds the
lock for up to the busy timeout), so async callers run them in a worker thread; the store is
safe to call from several threads at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, TypeVar

from parley.errors import ClientError, Code
from parley.store.database import Database

__all__ = [
    "ApiKey",
    "ClientSecret",
    "KeyStore",
    "Limits",
    "Tenant",
]

_T = TypeVar("_T")
_ALPHABET = string.ascii_letters + string.digits
KEY_PREFIX = "sk-parley-"
SECRET_PREFIX = "ek_"
DEFAULT_SECRET_TTL_S = 600
MAX_SECRET_TTL_S = 7200
MIN_SECRET_TTL_S = 10
# Active keys remembered between database changes (a record is ~1 KiB).
CACHE_SIZE = 1024


def _token(prefix: str, n: int) -> str:
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(n))


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key limits; None means no limit."""

    requests_per_minute: int | None = None
    max_sessions: int | None = None
    max_session_s: int | None = None


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: Tenant
    prefix: str
    name: str
    created_at: float
    revoked_at: float | None
    limits: Limits

    @property
    def active(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True, slots=True)
class ClientSecret:
    key: ApiKey
    session: dict[str, Any]
    expires_at: float


class KeyStore:
    """All tenants' keys. Lookups of active keys are cached until :meth:`generation` changes."""

    def __init__(self, db: Database, *, cache_size: int = CACHE_SIZE) -> None:
        self._db = db
        self._cache_size = cache_size
        self._cache_lock = threading.Lock()
        self._seen: tuple[int, int, float] | None = None
        self._by_hash: OrderedDict[str, ApiKey] = OrderedDict()
        self._active: OrderedDict[str, bool] = OrderedDict()

    # --- revocation ----------------------------------------------------------------------------

    def generation(self) -> tuple[int, int, float]:
        """Changes whenever a key is created or revoked, by any process. Compare for equality
        only."""
        row = self._db.query(
            "SELECT count(*), count(revoked_at), coalesce(max(revoked_at), 0) FROM api_keys"
        )[0]
        return int(row[0]), int(row[1]), float(row[2])

    def is_active(self, key_id: str) -> bool:
        """Whether the key ``key_id`` exists and is not revoked. Cached until the database
        changes: an open session can ask every second for the price of one small query."""
        generation = self.generation()
        with self._cache_lock:
            self._refresh(generation)
            cached = self._active.get(key_id)
        if cached is not None:
            return cached
        rows = self._db.query("SELECT revoked_at FROM api_keys WHERE id = :id", {"id": key_id})
        active = bool(rows) and rows[0]["revoked_at"] is None
        with self._cache_lock:
            if self._seen == generation:
                _remember(self._active, key_id, active, self._cache_size)
        return active

    def _refresh(self, generation: tuple[int, int, float]) -> None:
        """Forget cached lookups made before ``generation`` (the caller holds the cache lock)."""
        if generation != self._seen:
            self._seen = generation
            self._by_hash.clear()
            self._active.clear()

    # --- tenants -------------------------------------------------------------------------------

    def tenant(self, name: str, *, create: bool = False) -> Tenant:
        name = name.strip()
        if not name or len(name) > 64:
            raise ClientError("a tenant name is 1 to 64 characters", param="tenant")
        rows = self._db.query("SELECT id, name FROM tenants WHERE name = :name", {"name": name})
        if rows:
            return Tenant(rows[0]["id"], rows[0]["name"])
        if not create:
            raise ClientError(
                f"unknown tenant {name!r}", param="tenant", code=Code.TENANT_NOT_FOUND
            )
        tenant = Tenant(_token("ten_", 16), name)
        self._db.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (:id, :name, :created_at)",
            {"id": tenant.id, "name": tenant.name, "created_at": time.time()},
        )
        return tenant

    # --- keys ----------------------------------------------------------------------------------

    def create_key(
        self, tenant: str, *, name: str = "", limits: Limits | None = None
    ) -> tuple[str, ApiKey]:
        """A new key for ``tenant`` (created if new): the token, shown once, and its record."""
        limits = limits or Limits()
        for value in (limits.requests_per_minute, limits.max_sessions, limits.max_session_s):
            if value is not None and value < 1:
                raise ClientError("limits must be positive", param="limits")
        with self._db.transaction():
            owner = self.tenant(tenant, create=True)
            token = _token(KEY_PREFIX, 40)
            key = ApiKey(_token("key_", 16), owner, token[:14], name, time.time(), None, limits)
            self._db.execute(
                "INSERT INTO api_keys (id, tenant_id, hash, prefix, name, created_at, rpm,"
                " max_sessions, max_session_s) VALUES (:id, :tenant_id, :hash, :prefix, :name,"
                " :created_at, :rpm, :max_sessions, :max_session_s)",
                {
                    "id": key.id,
                    "tenant_id": owner.id,
                    "hash": _hash(token),
                    "prefix": key.prefix,
                    "name": name,
                    "created_at": key.created_at,
                    "rpm": limits.requests_per_minute,
                    "max_sessions": limits.max_sessions,
                    "max_session_s": limits.max_session_s,
                },
            )
        return token, key

    def list_keys(self, tenant: str) -> list[ApiKey]:
        owner = self.tenant(tenant)
        rows = self._db.query(
            "SELECT * FROM api_keys WHERE tenant_id = :tenant_id ORDER BY created_at",
            {"tenant_id": owner.id},
        )
        return [_key(row, owner) for row in rows]

    def revoke(self, tenant: str, key_id: str) -> ApiKey:
        """Revoke a key of ``tenant`` (by id or by the prefix ``list_keys`` shows)."""
        owner = self.tenant(tenant)
        with self._db.transaction():
            rows = self._db.query(
                "SELECT * FROM api_keys"
                " WHERE tenant_id = :tenant_id AND (id = :key OR prefix = :key)",
                {"tenant_id": owner.id, "key": key_id},
            )
            if len(rows) != 1:
                raise ClientError(
                    f"tenant {tenant!r} has no key {key_id!r}", param="key", code=Code.KEY_NOT_FOUND
                )
            self._db.execute(
                "UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL",
                {"now": time.time(), "id": rows[0]["id"]},
            )
            key = _key(
                self._db.query("SELECT * FROM api_keys WHERE id = :id", {"id": rows[0]["id"]})[0],
                owner,
            )
        return key

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key this token is, or None."""
        if not token.startswith(KEY_PREFIX):
            return None
        digest = _hash(token)
        generation = self.generation()
        with self._cache_lock:
            self._refresh(generation)
            cached = self._by_hash.get(digest)
            if cached is not None:
                self._by_hash.move_to_end(digest)
                return cached
        rows = self._db.query(
            "SELECT k.*, t.name AS tenant_name FROM api_keys k JOIN tenants t"
            " ON t.id = k.tenant_id WHERE k.hash = :hash",
            {"hash": digest},
        )
        if not rows or rows[0]["revoked_at"] is not None:
            return None  # unknown tokens are not cached: they cannot fill the cache
        row = rows[0]
        key = _key(row, Tenant(row["tenant_id"], row["tenant_name"]))
        with self._cache_lock:
            if self._seen == generation:  # nothing was revoked while we looked
                _remember(self._by_hash, digest, key, self._cache_size)
        return key

    # --- ephemeral client secrets --------------------------------------------------------------

    def create_client_secret(
        self, key: ApiKey, session: dict[str, Any], ttl_s: int = DEFAULT_SECRET_TTL_S
    ) -> tuple[str, float]:
        if not MIN_SECRET_TTL_S <= ttl_s <= MAX_SECRET_TTL_S:
            raise ClientError(
                f"expires_after.seconds must be between {MIN_SECRET_TTL_S} and {MAX_SECRET_TTL_S}",
                param="expires_after.seconds",
                code=Code.INVALID_VALUE,
            )
        token = _token(SECRET_PREFIX, 32)
        now = time.time()
        self._db.execute(
            "INSERT INTO client_secrets (hash, key_id, session, created_at, expires_at)"
            " VALUES (:hash, :key_id, :session, :created_at, :expires_at)",
            {
                "hash": _hash(token),
                "key_id": key.id,
                "session": json.dumps(session),
                "created_at": now,
                "expires_at": now + ttl_s,
            },
        )
        return token, now + ttl_s

    def redeem_client_secret(self, token: str) -> ClientSecret | None:
        """The secret's session, once: a used, expired or unknown secret (or one whose key was
        revoked since) gives None."""
        if not token.startswith(SECRET_PREFIX):
            return None
        with self._db.transaction():
            rows = self._db.query(
                "SELECT * FROM client_secrets WHERE hash = :hash", {"hash": _hash(token)}
            )
            if not rows:
                return None
            row = rows[0]
            now = time.time()
            if row["used_at"] is not None or row["expires_at"] <= now:
                return None
            keys = self._db.query(
                "SELECT k.*, t.name AS tenant_name FROM api_keys k JOIN tenants t"
                " ON t.id = k.tenant_id WHERE k.id = :id",
                {"id": row["key_id"]},
            )
            if not keys or keys[0]["revoked_at"] is not None:
                return None
            self._db.execute(
                "UPDATE client_secrets SET used_at = :now WHERE hash = :hash",
                {"now": now, "hash": row["hash"]},
            )
            key = _key(keys[0], Tenant(keys[0]["tenant_id"], keys[0]["tenant_name"]))
            return ClientSecret(key, json.loads(row["session"]), row["expires_at"])


def _remember(cache: OrderedDict[str, _T], name: str, value: _T, size: int) -> None:
    cache[name] = value
    cache.move_to_end(name)
    while len(cache) > size:
        cache.popitem(last=False)


def _key(row: Any, tenant: Tenant) -> ApiKey:
    return ApiKey(
        id=row["id"],
        tenant=tenant,
        prefix=row["prefix"],
        name=row["name"],
        created_at=row["created_at"],
        revoked_at=row["revoked_at"],
        limits=Limits(row["rpm"], row["max_sessions"], row["max_session_s"]),
    )
