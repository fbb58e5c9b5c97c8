from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy.exc

from parley.errors import ConfigError
from parley.store import MIGRATIONS, Database, Migration

NOTES = (
    Migration(1, "notes", "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"),
    Migration(
        2,
        "note_tags",
        """
        CREATE TABLE tags (note INTEGER NOT NULL REFERENCES notes (id), tag TEXT NOT NULL);
        CREATE TRIGGER note_gone AFTER DELETE ON notes BEGIN
            DELETE FROM tags WHERE note = old.id;
        END;
        """,
    ),
)


@pytest.fixture
def db() -> Iterator[Database]:
    with Database(":memory:", migrations=NOTES) as database:
        yield database


def applied(path: Path) -> list[tuple[int, str]]:
    conn = sqlite3.connect(path)
    rows = conn.execute("SELECT version, name FROM schema_migrations ORDER BY version")
    result = [(int(v), str(n)) for v, n in rows]
    conn.close()
    return result


def test_sqlite_migrations_applied_once(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    with Database(path, migrations=NOTES[:1]) as db:
        assert db.schema_version == 1
        db.execute("INSERT INTO notes (body) VALUES ('kept')")
    with Database(path, migrations=NOTES) as db:  # one new migration: only it runs
        assert db.schema_version == 2
    with Database(path, migrations=NOTES) as db:  # nothing new: nothing runs, nothing lost
        assert [r["body"] for r in db.query("SELECT body FROM notes")] == ["kept"]
    assert applied(path) == [(1, "notes"), (2, "note_tags")]


def test_sqlite_default_migrations_create_prompt_table(tmp_path: Path) -> None:
    with Database(tmp_path / "p.db") as db:
        assert db.schema_version == MIGRATIONS[-1].version
        assert db.query("SELECT count(*) FROM prompt_templates")[0][0] == 0


def test_sqlite_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    Database(path, migrations=NOTES).close()
    with pytest.raises(ConfigError, match=r"schema version 2, newer than this parley's 1") as info:
        Database(path, migrations=NOTES[:1])
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


def test_sqlite_failed_migration_leaves_nothing_behind(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    broken = (*NOTES, Migration(3, "broken", "CREATE TABLE ok (x); CREATE TABLE nonsense ((;"))
    with pytest.raises(ConfigError, match="cannot open database"):
        Database(path, migrations=broken)
    # All pending migrations share one transaction: none of them is half-applied.
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []
    conn.close()
    with Database(path, migrations=NOTES) as db:
        assert db.schema_version == 2


def test_sqlite_migrations_must_be_numbered_in_order() -> None:
    with pytest.raises(ValueError, match="should be 2"):
        Database(":memory:", migrations=(NOTES[0], Migration(3, "gap", "SELECT 1;")))


def test_sqlite_file_database_uses_wal_and_foreign_keys(tmp_path: Path) -> None:
    with Database(tmp_path / "nested" / "dir" / "parley.db", migrations=NOTES) as db:
        assert db.query("PRAGMA journal_mode")[0][0] == "wal"
        assert db.query("PRAGMA foreign_keys")[0][0] == 1
        assert db.query("PRAGMA busy_timeout")[0][0] > 0
        with pytest.raises(sqlalchemy.exc.IntegrityError):
            db.execute("INSERT INTO tags (note, tag) VALUES (42, 'orphan')")


def test_sqlite_memory_database_works(db: Database) -> None:
    assert db.query("PRAGMA journal_mode")[0][0] == "memory"
    assert db.execute("INSERT INTO notes (body) VALUES (:b)", {"b": "hi"}) == 1
    row = db.query("SELECT id, body FROM notes WHERE body = :b", {"b": "hi"})[0]
    assert (row[0], row["body"]) == (1, "hi")


def test_sqlite_transaction_commits_or_rolls_back(db: Database) -> None:
    with db.transaction():
        db.execute("INSERT INTO notes (body) VALUES ('a')")
    with pytest.raises(RuntimeError), db.transaction():
        db.execute("INSERT INTO notes (body) VALUES ('b')")
        raise RuntimeError("boom")
    assert [r["body"] for r in db.query("SELECT body FROM notes")] == ["a"]


def test_sqlite_nested_transaction_is_a_savepoint(db: Database) -> None:
    with db.transaction():
        db.execute("INSERT INTO notes (body) VALUES ('outer')")
        with pytest.raises(RuntimeError), db.transaction():
            db.execute("INSERT INTO notes (body) VALUES ('inner')")
            raise RuntimeError("undo inner only")
        with db.transaction():
            db.execute("INSERT INTO notes (body) VALUES ('inner kept')")
    assert [r["body"] for r in db.query("SELECT body FROM notes ORDER BY id")] == [
        "outer",
        "inner kept",
    ]


def test_sqlite_concurrent_threads_share_one_database(tmp_path: Path) -> None:
    with Database(tmp_path / "parley.db", migrations=NOTES) as db:
        db.execute("CREATE TABLE counter (n INTEGER NOT NULL)")
        db.execute("INSERT INTO counter VALUES (0)")
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for i in range(50):
                    # A read-modify-write: loses updates unless transactions exclude each other.
                    with db.transaction():
                        n = db.query("SELECT n FROM counter")[0][0]
                        db.execute("UPDATE counter SET n = :n", {"n": n + 1})
                    db.execute("INSERT INTO notes (body) VALUES (:b)", {"b": f"{worker}-{i}"})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert db.query("SELECT n FROM counter")[0][0] == 400
        assert db.query("SELECT count(*) FROM notes")[0][0] == 400


def test_sqlite_two_connections_to_one_file(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    with Database(path, migrations=NOTES) as a, Database(path, migrations=NOTES) as b:
        errors: list[BaseException] = []

        def work(db: Database) -> None:
            try:
                for i in range(50):
                    with db.transaction():
                        db.execute("INSERT INTO notes (body) VALUES (:b)", {"b": str(i)})
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(d,)) for d in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert a.query("SELECT count(*) FROM notes")[0][0] == 100


def test_sqlite_corrupt_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    path.write_bytes(b"this is not a database, just some text" * 200)
    with pytest.raises(ConfigError, match="cannot open database") as info:
        Database(path)
    assert str(path) in info.value.message
    assert "\n" not in info.value.message


def test_sqlite_directory_path_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"cannot open database {tmp_path}"):
        Database(tmp_path)


def test_sqlite_parent_that_is_a_file_is_a_config_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot open database"):
        Database(blocker / "parley.db")


def test_sqlite_url_opens_the_same_file(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    with Database(path, migrations=NOTES) as db:
        db.execute("INSERT INTO notes (body) VALUES ('by path')")
    with Database(f"sqlite:///{path}", migrations=NOTES) as db:
        assert (db.dialect, db.path, db.url) == ("sqlite", str(path), f"sqlite:///{path}")
        assert [r["body"] for r in db.query("SELECT body FROM notes")] == ["by path"]
