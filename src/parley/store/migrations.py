"""Every schema change parley has made, in order: see :mod:`parley.store.sqlite` for the rules.

Append a :class:`Migration` with the next number to change the schema; never edit or reorder
one that has shipped (migration 3, the ledger, ships with issue 13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["MIGRATIONS", "Migration"]


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change. ``sql`` may hold several statements separated by ``;``."""

    version: int
    name: str
    sql: str


MIGRATIONS: Final[tuple[Migration, ...]] = (
    Migration(
        1,
        "prompt_templates",
        """
        CREATE TABLE prompt_templates (
            seq          INTEGER PRIMARY KEY,  -- insertion order: "latest" for non-numeric versions
            id           TEXT NOT NULL,
            version      TEXT NOT NULL,
            description  TEXT NOT NULL,
            instructions TEXT NOT NULL,
            variables    TEXT NOT NULL,        -- JSON list of {"name", "default"}
            created_at   REAL NOT NULL,        -- unix seconds
            UNIQUE (id, version)
        );
        """,
    ),
    Migration(
        2,
        "tenants_keys_client_secrets",
        """
        CREATE TABLE tenants (
            id          TEXT PRIMARY KEY,
            name        TEXT NOT NULL UNIQUE,
            created_at  REAL NOT NULL
        );
        CREATE TABLE api_keys (
            id              TEXT PRIMARY KEY,      -- key_... (shown, never secret)
            tenant_id       TEXT NOT NULL REFERENCES tenants (id),
            hash            TEXT NOT NULL UNIQUE,  -- sha256 of the key; the key is never stored
            prefix          TEXT NOT NULL,         -- first characters, to recognise a key
            name            TEXT NOT NULL,
            created_at      REAL NOT NULL,
            revoked_at      REAL,
            rpm             INTEGER,               -- requests per minute; NULL: no limit
            max_sessions    INTEGER,               -- concurrent Realtime sessions
            max_session_s   INTEGER                -- longest Realtime session
        );
        CREATE TABLE client_secrets (
            hash        TEXT PRIMARY KEY,          -- sha256 of the ek_ secret
            key_id      TEXT NOT NULL REFERENCES api_keys (id),
            session     TEXT NOT NULL,             -- JSON session configuration
            created_at  REAL NOT NULL,
            expires_at  REAL NOT NULL,
            used_at     REAL
        );
        -- Prompt templates belong to a tenant ('' for the default tenant of --no-auth).
        CREATE TABLE prompt_templates_v2 (
            seq          INTEGER PRIMARY KEY,
            tenant       TEXT NOT NULL DEFAULT '',
            id           TEXT NOT NULL,
            version      TEXT NOT NULL,
            description  TEXT NOT NULL,
            instructions TEXT NOT NULL,
            variables    TEXT NOT NULL,
            created_at   REAL NOT NULL,
            UNIQUE (tenant, id, version)
        );
        INSERT INTO prompt_templates_v2
            (seq, id, version, description, instructions, variables, created_at)
            SELECT seq, id, version, description, instructions, variables, created_at
            FROM prompt_templates;
        DROP TABLE prompt_templates;
        ALTER TABLE prompt_templates_v2 RENAME TO prompt_templates;
        """,
    ),
    Migration(
        3,
        "ledger_budgets",
        # Money is integer nano-dollars (1e-9 USD, column suffix _nusd): sums and the budget
        # check are exact, and a price of 1e-7 USD per token is still 100 units.
        """
        CREATE TABLE usage_records (
            id              TEXT PRIMARY KEY,          -- use_...
            time            DOUBLE PRECISION NOT NULL, -- unix seconds, when the call ended
            tenant          TEXT NOT NULL,             -- the tenant's name ('' with --no-auth)
            key_id          TEXT NOT NULL DEFAULT '',
            session_id      TEXT NOT NULL DEFAULT '',
            response_id     TEXT NOT NULL DEFAULT '',
            stage           TEXT NOT NULL,             -- asr | llm | tts
            engine          TEXT NOT NULL,             -- the policy's instance name
            model           TEXT NOT NULL DEFAULT '',
            route           TEXT NOT NULL DEFAULT '',
            audio_in_s      DOUBLE PRECISION NOT NULL DEFAULT 0,
            audio_out_s     DOUBLE PRECISION NOT NULL DEFAULT 0,
            input_tokens    BIGINT NOT NULL DEFAULT 0,
            output_tokens   BIGINT NOT NULL DEFAULT 0,
            characters      BIGINT NOT NULL DEFAULT 0,
            cost_nusd       BIGINT NOT NULL DEFAULT 0,
            latency_ms      DOUBLE PRECISION,
            outcome         TEXT NOT NULL              -- ok | error | failed_over
        );
        CREATE INDEX usage_records_time ON usage_records (time);
        CREATE INDEX usage_records_tenant_time ON usage_records (tenant, time);
        CREATE TABLE budgets (
            id              TEXT PRIMARY KEY,          -- bud_...
            tenant          TEXT NOT NULL,
            key_id          TEXT NOT NULL DEFAULT '',  -- '': the whole tenant
            period          TEXT NOT NULL,             -- day | month | total
            limit_nusd      BIGINT NOT NULL,
            soft_nusd       BIGINT,
            period_start    DOUBLE PRECISION NOT NULL, -- unix seconds (UTC) the period began
            spent_nusd      BIGINT NOT NULL DEFAULT 0,
            reserved_nusd   BIGINT NOT NULL DEFAULT 0,
            soft_warned_at  DOUBLE PRECISION,          -- this period's soft warning; NULL: none
            created_at      DOUBLE PRECISION NOT NULL,
            UNIQUE (tenant, key_id)
        );
        CREATE TABLE budget_reservations (
            id              TEXT PRIMARY KEY,          -- res_...
            budget_id       TEXT NOT NULL REFERENCES budgets (id) ON DELETE CASCADE,
            amount_nusd     BIGINT NOT NULL,
            created_at      DOUBLE PRECISION NOT NULL,
            expires_at      DOUBLE PRECISION NOT NULL  -- a crashed holder's is released after
        );
        CREATE INDEX budget_reservations_expiry ON budget_reservations (expires_at);
        """,
    ),
)
