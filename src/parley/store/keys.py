"""Tenants, API keys and ephemeral client secrets, in the embedded database.

Keys are random 40-character tokens (``sk-parley-...``); only their SHA-256 is stored, so a
database leak reveals no usable key (the tokens carry ~238 bits of entropy, so a fast hash is
enough: there is nothing to brute-force). A key belongs to one tenant and carries its limits.
Ephemeral client secrets (``ek_...``) are minted by a key, bound to a Realtime session
configuration and an expiry, and open exactly one connection.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

from parley.errors import ClientError, Code
from parley.store.sqlite import Database

__all__ = [
    "ApiKey",
    "ClientSecret",
    "KeyStore",
    "Limits",
    "Tenant",
]

_ALPHABET = string.ascii_letters + string.digits
KEY_PREFIX = "sk-parley-"
SECRET_PREFIX = "ek_"
DEFAULT_SECRET_TTL_S = 600
MAX_SECRET_TTL_S = 7200
MIN_SECRET_TTL_S = 10


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
    """All tenants' keys; every call runs a sub-millisecond query inline."""

    def __init__(self, db: Database) -> None:
        self._db = db

    # --- tenants -------------------------------------------------------------------------------

    def tenant(self, name: str, *, create: bool = False) -> Tenant:
        name = name.strip()
        if not name or len(name) > 64:
            raise ClientError("a tenant name is 1 to 64 characters", param="tenant")
        rows = self._db.query("SELECT id, name FROM tenants WHERE name = ?", (name,))
        if rows:
            return Tenant(rows[0]["id"], rows[0]["name"])
        if not create:
            raise ClientError(
                f"unknown tenant {name!r}", param="tenant", code=Code.TENANT_NOT_FOUND
            )
        tenant = Tenant(_token("ten_", 16), name)
        self._db.execute(
            "INSERT INTO tenants (id, name, created_at) VALUES (?, ?, ?)",
            (tenant.id, tenant.name, time.time()),
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
                " max_sessions, max_session_s) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    key.id,
                    owner.id,
                    _hash(token),
                    key.prefix,
                    name,
                    key.created_at,
                    limits.requests_per_minute,
                    limits.max_sessions,
                    limits.max_session_s,
                ),
            )
        return token, key

    def list_keys(self, tenant: str) -> list[ApiKey]:
        owner = self.tenant(tenant)
        rows = self._db.query(
            "SELECT * FROM api_keys WHERE tenant_id = ? ORDER BY created_at", (owner.id,)
        )
        return [_key(row, owner) for row in rows]

    def revoke(self, tenant: str, key_id: str) -> ApiKey:
        """Revoke a key of ``tenant`` (by id or by the prefix ``list_keys`` shows)."""
        owner = self.tenant(tenant)
        with self._db.transaction():
            rows = self._db.query(
                "SELECT * FROM api_keys WHERE tenant_id = ? AND (id = ? OR prefix = ?)",
                (owner.id, key_id, key_id),
            )
            if len(rows) != 1:
                raise ClientError(
                    f"tenant {tenant!r} has no key {key_id!r}", param="key", code=Code.KEY_NOT_FOUND
                )
            self._db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
                (time.time(), rows[0]["id"]),
            )
            return _key(
                self._db.query("SELECT * FROM api_keys WHERE id = ?", (rows[0]["id"],))[0], owner
            )

    def is_active(self, key_id: str) -> bool:
        """Whether the key still exists and is not revoked (open sessions ask every few
        seconds; one indexed lookup)."""
        rows = self._db.query("SELECT revoked_at FROM api_keys WHERE id = ?", (key_id,))
        return bool(rows) and rows[0]["revoked_at"] is None

    def authenticate(self, token: str) -> ApiKey | None:
        """The active key this token is, or None."""
        if not token.startswith(KEY_PREFIX):
            return None
        rows = self._db.query(
            "SELECT k.*, t.name AS tenant_name FROM api_keys k JOIN tenants t"
            " ON t.id = k.tenant_id WHERE k.hash = ?",
            (_hash(token),),
        )
        if not rows or rows[0]["revoked_at"] is not None:
            return None
        row = rows[0]
        return _key(row, Tenant(row["tenant_id"], row["tenant_name"]))

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
            " VALUES (?, ?, ?, ?, ?)",
            (_hash(token), key.id, json.dumps(session), now, now + ttl_s),
        )
        return token, now + ttl_s

    def redeem_client_secret(self, token: str) -> ClientSecret | None:
        """The secret's session, once: a used, expired or unknown secret (or one whose key was
        revoked since) gives None."""
        if not token.startswith(SECRET_PREFIX):
            return None
        with self._db.transaction():
            rows = self._db.query("SELECT * FROM client_secrets WHERE hash = ?", (_hash(token),))
            if not rows:
                return None
            row = rows[0]
            now = time.time()
            if row["used_at"] is not None or row["expires_at"] <= now:
                return None
            keys = self._db.query(
                "SELECT k.*, t.name AS tenant_name FROM api_keys k JOIN tenants t"
                " ON t.id = k.tenant_id WHERE k.id = ?",
                (row["key_id"],),
            )
            if not keys or keys[0]["revoked_at"] is not None:
                return None
            self._db.execute(
                "UPDATE client_secrets SET used_at = ? WHERE hash = ?", (now, row["hash"])
            )
            key = _key(keys[0], Tenant(keys[0]["tenant_id"], keys[0]["tenant_name"]))
            return ClientSecret(key, json.loads(row["session"]), row["expires_at"])


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
