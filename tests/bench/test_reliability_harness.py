"""``benchmarks/reliability.py``: its fuzzer, and a fuzz run small enough for the suite."""

from __future__ import annotations

import importlib.util
import json
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def reliability() -> ModuleType:
    # A script, not a package: loaded from its path, as `python benchmarks/reliability.py` runs.
    spec = importlib.util.spec_from_file_location("reliability", ROOT / "benchmarks/reliability.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["reliability"] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_reliability_fuzzer_covers_every_kind_and_is_repeatable(reliability: ModuleType) -> None:
    def cases(seed: int) -> list[tuple[str, list[str | bytes | tuple[str, ...]]]]:
        fuzzer = reliability.Fuzzer(random.Random(seed), huge_bytes=1 << 12)
        return [fuzzer.case(["item_a", "item_b"]) for _ in range(600)]

    first = cases(3)
    assert first == cases(3)
    assert {kind for kind, _ in first} == set(reliability.Fuzzer.KINDS)
    for _, messages in first:
        assert messages and all(isinstance(m, str | bytes | tuple) for m in messages)
    valid = [json.loads(m[0]) for kind, m in first if kind == "valid"]
    assert all(isinstance(event, dict) and "type" in event for event in valid)


def test_reliability_fuzz_smoke(reliability: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "fuzz.json"
    argv = ["fuzz", "--events", "50", "--connections", "2", "--batch", "10", "--out", str(out)]
    assert reliability.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["events_sent"] >= 50
    assert result["machine"]["cpus"] >= 1
    assert result["server_alive"] and result["crashes"] == 0
    assert result["hangs"] == 0 and result["closes_without_close_frame"] == 0
    assert result["final_turns_completed"] == len(result["final_turns"]) == 2
    assert result["fresh_connection_turn"]["ok"]
    assert result["server_exit_code"] == 0
