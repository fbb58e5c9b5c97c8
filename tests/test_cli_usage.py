"""``parley usage report`` and ``parley budgets``: tables, CSV, the chart, and clear errors."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest

from parley.cli import main
from parley.commands.usage import parse_since
from parley.ledger import FIELDS, Budgets, Ledger, UsageRecord
from parley.store import Database
from parley.store.keys import KeyStore

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "parley.db"
    with Database(path) as database:
        Ledger(database).write(
            [
                UsageRecord(
                    tenant="acme",
                    stage="llm",
                    engine="cloud-llm",
                    cost_nusd=10**9,
                    time=T0,
                    model="gpt-x",
                    route="default",
                    key_id="key_a",
                    latency_ms=12.5,
                ),
                UsageRecord(
                    tenant="acme",
                    stage="tts",
                    engine="espeak",
                    cost_nusd=5 * 10**8,
                    time=T0 + DAY,
                    outcome="failed_over",
                ),
                UsageRecord(
                    tenant="globex",
                    stage="asr",
                    engine="pocketsphinx",
                    cost_nusd=2 * 10**8,
                    time=T0 + DAY,
                ),
            ]
        )
    return path


def parley(db: Path, *args: str) -> int:
    return main([*args, "--set", f"server.database={db}"])


def test_cli_usage_report_table_by_stage(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parley(db, "usage", "report", "--by", "stage") == 0
    out = capsys.readouterr().out
    assert "2026-01-01" in out and "2026-01-02" in out
    for stage in ("llm", "tts", "asr"):
        assert stage in out
    assert "$1.700000" in out


def test_cli_usage_report_csv_rows_are_records(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parley(db, "usage", "report", "--csv", "--tenant", "acme") == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == list(FIELDS)
    assert "outcome" in rows[0]
    assert [(r["stage"], r["outcome"]) for r in rows] == [("llm", "ok"), ("tts", "failed_over")]
    assert rows[0]["latency_ms"] == "12.5" and rows[1]["latency_ms"] == ""
    assert rows[0]["cost_nusd"] == "1000000000"


def test_cli_usage_report_csv_by_and_since(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert parley(db, "usage", "report", "--csv", "--by", "outcome", "--since", "2026-01-02") == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows == [
        ["day", "outcome", "calls", "cost_usd"],
        ["2026-01-02", "failed_over", "1", "0.500000"],
        ["2026-01-02", "ok", "1", "0.200000"],
    ]


def test_cli_usage_report_png(db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    png = tmp_path / "cost.png"
    assert parley(db, "usage", "report", "--by", "tenant", "--png", str(png)) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_usage_report_png_without_matplotlib_is_one_line(
    db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails
    assert parley(db, "usage", "report", "--png", str(tmp_path / "x.png")) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'parley[bench]'" in err


def test_cli_usage_report_bad_since_is_one_line(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert parley(db, "usage", "report", "--since", "yesterday") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--since" in err


def test_cli_since_dates_and_datetimes() -> None:
    assert parse_since("2026-01-02") == T0 + DAY
    assert parse_since("2026-01-02T06:00:00") == T0 + DAY + 6 * 3600
    assert parse_since("2026-01-02T06:00:00+02:00") == T0 + DAY + 4 * 3600


def test_cli_budgets_set_and_list(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with Database(db) as database:
        _, key = KeyStore(database).create_key("acme")
    assert parley(db, "budgets", "set", "--tenant", "acme", "--limit-usd", "10") == 0
    assert (
        parley(
            db,
            "budgets",
            "set",
            "--tenant",
            "acme",
            "--key",
            key.id,
            "--limit-usd",
            "2",
            "--soft-usd",
            "1.5",
            "--period",
            "day",
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "$10 per month" in out and f"key {key.id}" in out and "warn past $1.5" in out
    assert parley(db, "budgets", "list") == 0
    out = capsys.readouterr().out
    assert "acme" in out and "10.0000" in out and "1.5000" in out and "day" in out
    with Database(db) as database:
        found = Budgets(database).list("acme")
    assert [(b.key_id, b.limit_usd, b.period) for b in found] == [
        ("", 10.0, "month"),
        (key.id, 2.0, "day"),
    ]


def test_cli_budgets_refuse_unknown_keys_and_bad_limits(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with Database(db) as database:
        KeyStore(database).create_key("acme")
    assert (
        parley(db, "budgets", "set", "--tenant", "acme", "--key", "key_x", "--limit-usd", "1") == 2
    )
    assert "no key key_x" in capsys.readouterr().err
    assert parley(db, "budgets", "set", "--tenant", "acme", "--limit-usd", "-1") == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert parley(db, "budgets", "list", "--tenant", "nobody") == 0
    assert "no budgets" in capsys.readouterr().out
