from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from parley.bench.clips import Clip, load_clips

# The tests never reach the network: the Hugging Face clients (read at their import) must not
# try, in this process or in the servers and commands it starts. tests/test_models.py turns
# it off for its fake hub on loopback.
os.environ["HF_HUB_OFFLINE"] = "1"
# The suite serves with the fast profile (pocketsphinx + espeak-ng: real engines, and many
# servers start on two cores in a few minutes); the neural defaults have tests of their own,
# which clear this (tests/test_defaults.py).
os.environ["PARLEY_PROFILE"] = "fast"

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


@pytest.fixture
def database(tmp_path: Path):  # type: ignore[no-untyped-def]
    """A fresh, migrated parley database: SQLite in a temporary file. (The PostgreSQL variant
    joins this fixture with the storage port of issue 13.)"""
    from parley.store import Database

    db = Database(tmp_path / "parley.db")
    try:
        yield db
    finally:
        db.close()
