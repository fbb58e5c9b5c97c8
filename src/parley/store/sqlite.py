"""The embedded SQLite database: one file, WAL journal, schema migrations.

parley keeps its small durable state (prompt templates now; API keys and tenants later) in one
SQLite file. This module opens it, brings its schema up to date and offers a deliberately small
API: :meth:`Database.execute`, :meth:`Database.query` and :meth:`Database.transaction`.

**Migrations.** :data:`MIGRATIONS` is the ordered list of every schema change parley has ever
made, numbered 1, 2, 3, ... without gaps. Opening a database applies, in one transaction, the
ones its ``schema_migrations`` table does not record yet, and records them; opening it again
applies nothing. To change the schema, append a :class:`Migration` with the next number to the
end of the list, here, and never edit or reorder one that has shipped. A database recording a
version beyond the end of the list was written by a newer parley and is refused with a
:class:`~parley.errors.ConfigError` rather than misread.

**Threads and the event loop.** One connection (``check_same_thread=False``) is shared by all
threads and guarded by a re-entrant lock; a transaction holds the lock until it ends, so no other
thread's statement can land inside it. Statements on this database take well under a
millisecond, so async code calls them inline rather than through ``asyncio.to_thread``; this
module must not grow queries that scan large tables. Other processes on the same file are kept
apart by SQLite's own locking: WAL lets readers run beside the one writer, and ``busy_timeout``
makes a writer wait for another instead of failing at once.

This module knows nothing of what the tables mean; the stores built on it (``prompts.py``) do.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Final

from parley.errors import ConfigError
from parley.store.migrations import MIGRATIONS, Migration

__all__ = ["MIGRATIONS", "Database", "Migration"]

# How long a writer waits for another process's write lock before SQLite gives up.
BUSY_TIMEOUT_MS: Final = 5000
_MEMORY = ":memory:"

Params = Sequence[object] | Mapping[str, object]


class Database:
    """The SQLite database at ``path`` (``":memory:"`` for a private in-memory one).

    Opening creates missing parent directories, turns on WAL (file databases only), foreign keys
    and a busy timeout, then applies pending migrations. A path that cannot be opened, a file
    that is not a SQLite database and a schema newer than this code raise
    :class:`~parley.errors.ConfigError` naming the path. Errors of the statements themselves
    (constraint violations, SQL mistakes) surface as :mod:`sqlite3` exceptions: they are bugs
    in the store that issued them, not faults of a client.
    """

    def __init__(self, path: Path | str, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        _check_migrations(migrations)
        self._path = str(path)
        self._lock = threading.RLock()
        self._savepoints = 0
        in_memory = self._path in (_MEMORY, "")
        if not in_memory:
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot open database {self._path}: {exc.strerror}") from exc
        try:
            self._conn = sqlite3.connect(self._path, check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise ConfigError(f"cannot open database {self._path}: {exc}") from exc
        try:
            self._conn.row_factory = sqlite3.Row
            self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if not in_memory:
                self._conn.execute("PRAGMA journal_mode = WAL")
            self._conn.execute("PRAGMA foreign_keys = ON")
            self._schema_version = self._migrate(migrations)
        except ConfigError:
            self._conn.close()
            raise
        except sqlite3.Error as exc:
            self._conn.close()
            raise ConfigError(f"cannot open database {self._path}: {exc}") from exc

    @property
    def path(self) -> str:
        return self._path

    @property
    def schema_version(self) -> int:
        """The highest migration applied; 0 for an empty migration list."""
        return self._schema_version

    def execute(self, sql: str, params: Params = ()) -> int:
        """Run one statement; return the number of rows it changed (-1 for non-DML)."""
        with self._lock:
            return self._conn.execute(sql, params).rowcount

    def query(self, sql: str, params: Params = ()) -> list[sqlite3.Row]:
        """Run one statement and return all its rows (columns by index or by name)."""
        with self._lock:
            return self._conn.execute(sql, params).fetchall()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the enclosed :meth:`execute` and :meth:`query` calls as one atomic unit.

        Commits when the block ends normally, rolls back when it raises. The write lock is taken
        at the start (``BEGIN IMMEDIATE``), so a read-then-write cannot be overtaken by another
        process. Nested blocks become savepoints: an inner block that raises undoes only its
        own work, and nothing is committed until the outermost block ends.
        """
        with self._lock:
            if self._conn.in_transaction:
                self._savepoints += 1
                name = f"sp{self._savepoints}"
                self._conn.execute(f"SAVEPOINT {name}")
                try:
                    yield
                except BaseException:
                    self._conn.execute(f"ROLLBACK TO {name}")
                    self._conn.execute(f"RELEASE {name}")
                    raise
                else:
                    self._conn.execute(f"RELEASE {name}")
                finally:
                    self._savepoints -= 1
                return
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                if self._conn.in_transaction:  # SQLite may already have rolled back
                    self._conn.execute("ROLLBACK")
                raise
            else:
                self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({self._path!r}, schema_version={self._schema_version})"

    def _migrate(self, migrations: Sequence[Migration]) -> int:
        latest = migrations[-1].version if migrations else 0
        with self.transaction():
            self.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')))"
            )
            current = self.query("SELECT coalesce(max(version), 0) FROM schema_migrations")[0][0]
            if current > latest:
                raise ConfigError(
                    f"database {self._path} has schema version {current}, newer than this "
                    f"parley's {latest}; upgrade parley or point it at another database"
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                # executescript() would commit first; run the statements one by one instead.
                for statement in _statements(migration.sql):
                    self.execute(statement)
                self.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (?, ?)",
                    (migration.version, migration.name),
                )
        return latest


def _check_migrations(migrations: Sequence[Migration]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration {migration.name!r} has version {migration.version}; "
                f"migrations must be numbered 1, 2, 3, ... and this one should be {expected}"
            )


def _statements(sql: str) -> Iterator[str]:
    """Split ``sql`` into complete statements (a ``;`` inside a trigger body does not split)."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()!r}")
