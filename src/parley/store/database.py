"""parley's database: embedded SQLite (the default) or PostgreSQL, through SQLAlchemy 2 Core.

parley keeps its small durable state (prompt templates, tenants and keys, the ledger and budgets)
in one database. This module opens it, brings its schema up to date and offers a deliberately
small API: :meth:`Database.execute`, :meth:`Database.query` and :meth:`Database.transaction`.
Statements are SQL text with named parameters (``WHERE id = :id``, a mapping of values) that
both dialects accept; where they differ, a store asks :attr:`Database.dialect`.

**Where.** A plain path, ``sqlite:///PATH`` or ``":memory:"`` opens SQLite (WAL journal for
files, foreign keys on, a busy timeout); ``postgresql://USER@HOST:PORT/DB`` opens PostgreSQL
through psycopg 3.

**Migrations.** :data:`MIGRATIONS` is the ordered list of every schema change parley has ever
made, numbered 1, 2, 3, ... without gaps; a migration may carry a PostgreSQL variant of its SQL
where the dialects differ. Opening a database applies, in one transaction, the ones its
``schema_migrations`` table does not record yet, and records them; opening it again applies
nothing. To change the schema, append a :class:`Migration` with the next number to the end of
the list and never edit or reorder one that has shipped. A database recording a version beyond
the end of the list was written by a newer parley and is refused with a
:class:`~parley.errors.ConfigError` rather than misread. Replicas that start at once against
one PostgreSQL migrate one after the other: migration runs in a :meth:`~Database.transaction`,
which holds the write lock below.

**Transactions: one writer at a time, on both dialects.** A read-then-write in
:meth:`~Database.transaction` must not be overtaken by another connection (two redeems of one
client secret, two puts of one prompt version, two reservations against one budget). SQLite
gives that with ``BEGIN IMMEDIATE``: the transaction takes the database's write lock first.
PostgreSQL gets the same rule from a transaction-scoped advisory lock
(``pg_advisory_xact_lock``) taken by the first statement of every transaction, at READ COMMITTED:
every statement after it sees all that earlier lock holders committed. We chose this over
SERIALIZABLE because a context manager cannot re-run its block after a serialisation failure, so
every caller would have to retry by hand; the cost is that transactions on one PostgreSQL
database (not single statements outside one) run one at a time across all replicas, which parley's
short transactions (a few indexed statements) afford. A writer waits for the lock up to
:data:`BUSY_TIMEOUT_MS`, then fails (SQLite's ``busy_timeout``, PostgreSQL's ``lock_timeout``).

**Threads and the event loop.** One connection is shared by all threads and guarded by a
re-entrant lock; a transaction holds the lock until it ends, so no other thread's statement can
land inside it and the transaction belongs to the thread that opened it. Statements here take
about a millisecond, so async code calls them inline or through ``asyncio.to_thread`` as its
store documents; this module must not grow queries that scan large tables. A PostgreSQL
connection that breaks (server restart) is replaced by the next statement after the failing one.

This module knows nothing of what the tables mean; the stores built on it (``prompts.py``,
``keys.py``, the ledger) do. Errors of the statements themselves (constraint violations, SQL
mistakes, a lock not granted in time) surface as :mod:`sqlalchemy.exc` exceptions: they are bugs
in, or load on, the store that issued them, not faults of a client.
"""

from __future__ import annotations

import re
import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import sqlalchemy
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.pool import NullPool

from parley.errors import ConfigError
from parley.store.migrations import MIGRATIONS, Migration

__all__ = ["BUSY_TIMEOUT_MS", "MIGRATIONS", "Database", "Migration", "Row"]

# How long a writer waits for another's write lock before giving up.
BUSY_TIMEOUT_MS: Final = 5000
# How long opening a PostgreSQL connection may take (seconds) unless the URL says otherwise.
CONNECT_TIMEOUT_S: Final = 10
# The advisory lock every PostgreSQL transaction takes: "parley" in ASCII, one per database.
WRITE_LOCK: Final = 0x7061726C6579
_MEMORY = ":memory:"

Params = Mapping[str, object]
Dialect = Literal["sqlite", "postgresql"]


class Row:
    """One result row: by column index (``row[0]``) or name (``row["id"]``), like sqlite3.Row."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: tuple[Any, ...], index: Mapping[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str) -> Any:
        if isinstance(key, str):
            return self._values[self._index[key]]
        return self._values[key]

    def __len__(self) -> int:
        return len(self._values)

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Row):
            return self._values == other._values
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values)

    def keys(self) -> list[str]:
        return list(self._index)

    def __repr__(self) -> str:
        return f"Row({dict(zip(self._index, self._values, strict=True))!r})"


class Database:
    """The database at ``where``: a SQLite path (``":memory:"`` for a private in-memory one),
    a ``sqlite:///`` URL or a ``postgresql://`` URL.

    Opening creates a SQLite file's missing parent directories, then applies pending
    migrations. A location that cannot be opened (missing directory rights, a file that is not a
    SQLite database, a PostgreSQL server that does not answer or refuses us), a URL that is not
    one, and a schema newer than this code raise :class:`~parley.errors.ConfigError`: one line
    naming the place (never a password).
    """

    def __init__(self, where: Path | str, *, migrations: Sequence[Migration] = MIGRATIONS) -> None:
        _check_migrations(migrations)
        url, self._path = _parse(where)
        if self._path is not None:
            self._url = f"sqlite:///{self._path}"
        else:
            self._url = url.set(drivername="postgresql").render_as_string(hide_password=True)
        self._lock = threading.RLock()
        self._depth = 0  # open transaction() blocks: 0 outside, 1 in one, 2+ in savepoints
        self._dialect: Dialect = "sqlite" if self._path is not None else "postgresql"
        where_shown = self._path if self._path is not None else self._url
        if self._path is not None and self._path not in (_MEMORY, ""):
            try:
                Path(self._path).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot open database {where_shown}: {exc.strerror}") from exc
        # The driver commits every statement by itself (AUTOCOMMIT); transaction() brackets
        # statements with BEGIN ... COMMIT, SAVEPOINT and ROLLBACK of its own, so that SQLite can
        # say BEGIN IMMEDIATE and nothing opens a transaction behind our back.
        self._engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, isolation_level="AUTOCOMMIT", connect_args=_connect_args(url)
        )
        try:
            self._conn: Connection = self._engine.connect()
            if self._dialect == "sqlite":
                self.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                if self._path not in (_MEMORY, ""):
                    self.execute("PRAGMA journal_mode = WAL")
                    # In WAL mode NORMAL syncs at checkpoints, not at every commit: a commit is
                    # durable once this returns if the *process* dies (kill -9: the usage
                    # records of a finished turn are there), and only an OS crash or power loss
                    # may lose the last ones. FULL cost ~0.7 ms of fsync per reservation
                    # (docs/benchmarks.md), paid on the event loop.
                    self.execute("PRAGMA synchronous = NORMAL")
                self.execute("PRAGMA foreign_keys = ON")
            self._schema_version = self._migrate(migrations)
        except ConfigError:
            self._dispose()
            raise
        except sa_exc.SQLAlchemyError as exc:
            self._dispose()
            raise ConfigError(f"cannot open database {where_shown}: {_one_line(exc)}") from exc

    @property
    def path(self) -> str | None:
        """The SQLite file (``":memory:"`` for an in-memory one); None on PostgreSQL."""
        return self._path

    @property
    def url(self) -> str:
        """Where the database is, as a URL, with any password hidden."""
        return self._url

    @property
    def dialect(self) -> Dialect:
        return self._dialect

    @property
    def schema_version(self) -> int:
        """The highest migration applied; 0 for an empty migration list."""
        return self._schema_version

    def execute(self, sql: str, params: Params | None = None) -> int:
        """Run one statement; return the number of rows it changed (-1 when not a count)."""
        with self._lock:
            result = self._run(sql, params)
            try:
                return result.rowcount
            finally:
                result.close()

    def query(self, sql: str, params: Params | None = None) -> list[Row]:
        """Run one statement and return all its rows (columns by index or by name)."""
        with self._lock:
            result = self._run(sql, params)
            if not result.returns_rows:
                result.close()
                return []
            index = {name: i for i, name in enumerate(result.keys())}
            return [Row(tuple(row), index) for row in result.fetchall()]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Run the enclosed :meth:`execute` and :meth:`query` calls as one atomic unit.

        Commits when the block ends normally, rolls back when it raises. The write lock is taken
        at the start (SQLite ``BEGIN IMMEDIATE``, PostgreSQL an advisory lock), so a
        read-then-write cannot be overtaken by another connection. Nested blocks become
        savepoints: an inner block that raises undoes only its own work, and nothing is
        committed until the outermost block ends.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                name = f"sp{self._depth}"
                self._run(f"SAVEPOINT {name}")
                try:
                    yield
                except BaseException:
                    self._run(f"ROLLBACK TO SAVEPOINT {name}")
                    self._run(f"RELEASE SAVEPOINT {name}")
                    raise
                else:
                    self._run(f"RELEASE SAVEPOINT {name}")
                finally:
                    self._depth -= 1
                return
            self._depth = 1
            try:
                if self._dialect == "sqlite":
                    self._run("BEGIN IMMEDIATE")
                else:
                    self._run("BEGIN")
                    self._run("SELECT pg_advisory_xact_lock(:key)", {"key": WRITE_LOCK})
                yield
            except BaseException:
                self._rollback()
                raise
            else:
                try:
                    self._run("COMMIT")
                except BaseException:
                    self._rollback()
                    raise
            finally:
                self._depth = 0

    def close(self) -> None:
        with self._lock:
            self._dispose()

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
        return f"Database({self._url!r}, schema_version={self._schema_version})"

    def _run(self, sql: str, params: Params | None = None) -> sqlalchemy.CursorResult[Any]:
        try:
            return self._conn.execute(sqlalchemy.text(sql), dict(params) if params else None)
        except sa_exc.DBAPIError as exc:
            if exc.connection_invalidated and not self._depth:
                # The server went away: let the next statement open a new connection. (Inside a
                # transaction the outermost block does this when it rolls back.)
                self._conn.rollback()
            raise

    def _rollback(self) -> None:
        """End the outermost transaction, whatever state the connection is in."""
        try:
            self._run("ROLLBACK")
        except sa_exc.SQLAlchemyError:
            # SQLite may already have rolled back; a broken connection cannot. The driver-level
            # rollback is a no-op on an idle connection and resets an invalidated one.
            self._conn.rollback()

    def _dispose(self) -> None:
        conn = getattr(self, "_conn", None)
        if conn is not None:
            conn.close()
        self._engine.dispose()

    def _migrate(self, migrations: Sequence[Migration]) -> int:
        latest = migrations[-1].version if migrations else 0
        with self.transaction():
            self.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version INTEGER PRIMARY KEY,"
                " name TEXT NOT NULL,"
                " applied_at TEXT NOT NULL)"
            )
            current = self.query("SELECT coalesce(max(version), 0) FROM schema_migrations")[0][0]
            if current > latest:
                raise ConfigError(
                    f"database {self._path or self._url} has schema version {current}, newer than "
                    f"this parley's {latest}; upgrade parley or point it at another database"
                )
            for migration in migrations:
                if migration.version <= current:
                    continue
                sql = migration.sql
                if self._dialect == "postgresql" and migration.postgresql is not None:
                    sql = migration.postgresql
                for statement in _statements(sql):
                    # Driver SQL: a migration's text has no parameters (a ':' is just a ':').
                    self._conn.exec_driver_sql(statement).close()
                self.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at)"
                    " VALUES (:version, :name, :applied_at)",
                    {
                        "version": migration.version,
                        "name": migration.name,
                        "applied_at": datetime.now(UTC).isoformat(timespec="milliseconds"),
                    },
                )
        return latest


def _parse(where: Path | str) -> tuple[URL, str | None]:
    """The SQLAlchemy URL for ``where`` and, for SQLite, the file's path."""
    text = str(where)
    if "://" not in text:
        return URL.create("sqlite+pysqlite", database=text), text
    try:
        url = make_url(text)
    except (sa_exc.ArgumentError, ValueError) as exc:
        shown = re.sub(r"//[^/]*@", "//***@", text)  # never show a password
        raise ConfigError(f"invalid database URL {shown!r}: {_one_line(exc)}") from exc
    backend, _, driver = url.drivername.partition("+")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        path = url.database or _MEMORY
        return URL.create("sqlite+pysqlite", database=path), path
    if backend in ("postgresql", "postgres") and driver in ("", "psycopg"):
        return url.set(drivername="postgresql+psycopg"), None
    raise ConfigError(
        f"unsupported database URL {_shown(url)}: use a file path, sqlite:///PATH or "
        "postgresql://USER@HOST:PORT/DATABASE"
    )


def _connect_args(url: URL) -> dict[str, object]:
    if url.get_backend_name() == "sqlite":
        return {"check_same_thread": False}
    args: dict[str, object] = {"application_name": "parley"}
    if "connect_timeout" not in url.query:
        args["connect_timeout"] = CONNECT_TIMEOUT_S
    options = url.query.get("options", "")
    args["options"] = f"{options} -c lock_timeout={BUSY_TIMEOUT_MS}".strip()
    return args


def _shown(url: URL) -> str:
    return repr(url.render_as_string(hide_password=True))


def _one_line(exc: BaseException) -> str:
    """An exception's message on one line, without SQLAlchemy's statement and link trailer."""
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc)
    return " ".join(text.split()) or type(exc).__name__


def _check_migrations(migrations: Sequence[Migration]) -> None:
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise ValueError(
                f"migration {migration.name!r} has version {migration.version}; "
                f"migrations must be numbered 1, 2, 3, ... and this one should be {expected}"
            )


def _statements(sql: str) -> Iterator[str]:
    """Split ``sql`` into complete statements (a ``;`` inside a quoted string or a SQLite
    trigger body does not split; PostgreSQL dollar-quoted bodies are not understood)."""
    pending = ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending.strip()
            pending = ""
    if pending.strip(" \t\r\n;"):
        raise ValueError(f"incomplete SQL statement in migration: {pending.strip()!r}")
