from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from parley.bench.clips import Clip, load_clips

if TYPE_CHECKING:
    from parley.store import Database

# The tests never reach the network: the Hugging Face clients (read at their import) must not
# try, in this process or in the servers and commands it starts. tests/test_models.py turns
# it off for its fake hub on loopback.
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite serves with the fast profile (pocketsphinx + espeak-ng: real engines, and many
# servers start on two cores in a few minutes); the neural defaults have tests of their own,
# which clear this (tests/test_defaults.py).
os.environ["PARLEY_PROFILE"] = "fast"
# The watermark and audit keys a command or server creates on first use go to a folder of this
# run, never into the checkout (tests that care pass their own with --set).
_KEYS = tempfile.mkdtemp(prefix="parley-test-keys-")
os.environ.setdefault("PARLEY_TRUST_WATERMARK_KEY_FILE", f"{_KEYS}/watermark.key")
os.environ.setdefault("PARLEY_TRUST_AUDIT_KEY_FILE", f"{_KEYS}/audit.key")

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "speech"


@pytest.fixture(scope="session")
def speech_dir() -> Path:
    assert (SPEECH / "manifest.jsonl").is_file(), f"shared speech clips missing at {SPEECH}"
    return SPEECH


@pytest.fixture(scope="session")
def clips(speech_dir: Path) -> dict[str, Clip]:
    return {c.id: c for c in load_clips(speech_dir, language=None)}


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z']+", text.lower()))


def shared_words(hypothesis: str, reference: str) -> set[str]:
    return words(hypothesis) & words(reference)


# The PostgreSQL server the storage tests use (any database on it: each test creates its own);
# .ci/postgres.sh starts one and prints the line that sets it.
POSTGRES_URL_VARIABLE = "PARLEY_TEST_POSTGRES_URL"


@contextmanager
def fresh_postgres_database(server_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the server at ``server_url``, dropped afterwards."""
    import psycopg
    from sqlalchemy.engine import make_url

    name = f"parley_test_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server_url, autocommit=True) as admin:
        admin.execute(f"CREATE DATABASE {name}")
    try:
        url = make_url(server_url).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        with psycopg.connect(server_url, autocommit=True) as admin:
            admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where a fresh parley database is, once per dialect: a SQLite file in a temporary
    directory, or a new database on the PostgreSQL at $PARLEY_TEST_POSTGRES_URL. Without that
    variable the PostgreSQL case is skipped, except in CI (``CI`` set), where it fails."""
    if request.param == "sqlite":
        yield str(tmp_path / "parley.db")
        return
    server_url = os.environ.get(POSTGRES_URL_VARIABLE)
    if not server_url:
        reason = f"{POSTGRES_URL_VARIABLE} is not set: start a server with .ci/postgres.sh"
        if os.environ.get("CI"):
            pytest.fail(f"CI runs the storage tests on PostgreSQL too; {reason}")
        pytest.skip(reason)
    with fresh_postgres_database(server_url) as url:
        yield url


@pytest.fixture
def database(database_url: str) -> Iterator[Database]:
    """A fresh, migrated parley database, on SQLite and on PostgreSQL (see ``database_url``)."""
    from parley.store import Database

    db = Database(database_url)
    try:
        yield db
    finally:
        db.close()
