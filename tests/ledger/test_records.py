"""The ledger: records written and read back, durable past a SIGKILL, and the Costs API page."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from parley.errors import ClientError
from parley.ledger import FIELDS, Ledger, UsageRecord
from parley.store import Database

DAY = 86_400
T0 = 1_767_225_600  # 2026-01-01T00:00:00Z
ROOT = Path(__file__).resolve().parents[2]


def record(tenant: str, stage: str, engine: str, nusd: int, t: float, **kw: Any) -> UsageRecord:
    return UsageRecord(tenant=tenant, stage=stage, engine=engine, cost_nusd=nusd, time=t, **kw)


def test_ledger_write_and_read_back_every_field(database: Database) -> None:
    ledger = Ledger(database)
    full = UsageRecord(
        tenant="acme",
        key_id="key_1",
        session_id="sess_1",
        response_id="resp_1",
        stage="llm",
        engine="cloud-llm",
        model="gpt-x",
        route="default",
        audio_in_s=1.25,
        audio_out_s=0.5,
        input_tokens=12,
        output_tokens=34,
        characters=56,
        cost_nusd=7_890,
        latency_ms=123.5,
        outcome="failed_over",
        time=T0 + 10,
    )
    ledger.write([full, record("globex", "asr", "pocketsphinx", 1, T0 + 5)])
    assert ledger.records(tenant="acme") == [full]
    assert [r.tenant for r in ledger.records()] == ["globex", "acme"]  # by time
    assert ledger.records(since=T0 + 6) == [full]
    assert [r.tenant for r in ledger.records(until=T0 + 6)] == ["globex"]
    assert full.cost_usd == pytest.approx(7.89e-6)
    assert full.line_item == "llm:cloud-llm"
    assert set(FIELDS) >= {"outcome", "engine", "route", "latency_ms", "cost_nusd"}
    assert full.id.startswith("use_")


def test_ledger_write_is_one_transaction(database: Database) -> None:
    ledger = Ledger(database)
    first = record("acme", "asr", "a", 1, T0)
    with pytest.raises(Exception):  # noqa: B017 -- the driver's own integrity error
        ledger.write([record("acme", "tts", "b", 1, T0), first, first])  # a duplicate id
    assert ledger.records() == []
    ledger.write([])


def test_ledger_bad_outcome_is_refused() -> None:
    with pytest.raises(ValueError):
        UsageRecord(tenant="a", stage="llm", engine="e", outcome="maybe")


def test_ledger_record_survives_sigkill_of_its_writer(tmp_path: Path) -> None:
    path = tmp_path / "parley.db"
    script = textwrap.dedent(
        f"""
        import sys, time
        from parley.ledger import Ledger, UsageRecord
        from parley.store import Database
        db = Database({str(path)!r})
        Ledger(db).write([UsageRecord(id="use_durable", tenant="acme", stage="llm",
                                      engine="cloud-llm", cost_nusd=42)])
        print("written", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "written"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    with Database(path) as db:
        [found] = Ledger(db).records()
    assert found.id == "use_durable" and found.cost_nusd == 42


# --- the Costs API page --------------------------------------------------------------------------


@pytest.fixture
def filled(database: Database) -> Ledger:
    ledger = Ledger(database, clock=lambda: T0 + 3 * DAY + 100)
    ledger.write(
        [
            record("acme", "llm", "cloud-llm", 1_000_000_000, T0 + 10),
            record("acme", "tts", "espeak", 250_000_000, T0 + 20),
            record("globex", "llm", "cloud-llm", 500_000_000, T0 + 30),
            record("acme", "llm", "cloud-llm", 2_000_000_000, T0 + DAY + 1),
            record("globex", "asr", "pocketsphinx", 1, T0 + 2 * DAY + 5),
            record("acme", "llm", "cloud-llm", 7, T0 - 1),  # before the range
        ]
    )
    return ledger


def amounts(page: dict[str, Any]) -> list[list[tuple[Any, Any, float]]]:
    return [
        [(r["project_id"], r["line_item"], r["amount"]["value"]) for r in b["results"]]
        for b in page["data"]
    ]


def test_costs_page_buckets_by_day_ungrouped(filled: Ledger) -> None:
    page = filled.costs_page(start_time=T0, end_time=T0 + 3 * DAY)
    assert page["object"] == "page" and page["has_more"] is False and page["next_page"] is None
    assert [(b["object"], b["start_time"], b["end_time"]) for b in page["data"]] == [
        ("bucket", T0 + i * DAY, T0 + (i + 1) * DAY) for i in range(3)
    ]
    assert amounts(page) == [[(None, None, 1.75)], [(None, None, 2.0)], [(None, None, 1e-9)]]
    result = page["data"][0]["results"][0]
    assert result["object"] == "organization.costs.result"
    assert result["amount"]["currency"] == "usd"


def test_costs_page_group_by_project_line_item_and_both(filled: Ledger) -> None:
    by_project = filled.costs_page(start_time=T0, end_time=T0 + DAY, group_by=["project_id"])
    assert amounts(by_project) == [[("acme", None, 1.25), ("globex", None, 0.5)]]
    by_item = filled.costs_page(start_time=T0, end_time=T0 + DAY, group_by=["line_item"])
    assert amounts(by_item) == [[(None, "llm:cloud-llm", 1.5), (None, "tts:espeak", 0.25)]]
    both = filled.costs_page(start_time=T0, end_time=T0 + DAY, group_by=["project_id", "line_item"])
    assert amounts(both) == [
        [
            ("acme", "llm:cloud-llm", 1.0),
            ("acme", "tts:espeak", 0.25),
            ("globex", "llm:cloud-llm", 0.5),
        ]
    ]


def test_costs_page_project_ids_filter(filled: Ledger) -> None:
    page = filled.costs_page(
        start_time=T0, end_time=T0 + 3 * DAY, group_by=["project_id"], project_ids=["globex"]
    )
    assert amounts(page) == [[("globex", None, 0.5)], [], [("globex", None, 1e-9)]]
    nothing = filled.costs_page(start_time=T0, end_time=T0 + DAY, project_ids=[])
    assert amounts(nothing) == [[]]


def test_costs_page_start_inside_a_day_counts_from_start(filled: Ledger) -> None:
    page = filled.costs_page(start_time=T0 + 15, end_time=T0 + DAY)
    assert page["data"][0]["start_time"] == T0
    assert amounts(page) == [[(None, None, 0.75)]]


def test_costs_page_pagination_round_trip(filled: Ledger) -> None:
    seen: list[int] = []
    page = filled.costs_page(start_time=T0, limit=2)  # end: now, in the fourth day
    pages = 1
    seen += [b["start_time"] for b in page["data"]]
    while page["has_more"]:
        assert isinstance(page["next_page"], str)
        page = filled.costs_page(start_time=T0, limit=2, page=page["next_page"])
        seen += [b["start_time"] for b in page["data"]]
        pages += 1
    assert pages == 2
    assert seen == [T0 + i * DAY for i in range(4)]
    assert page["next_page"] is None


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"bucket_width": "1h"}, "bucket_width"),
        ({"group_by": ["model"]}, "group_by"),
        ({"limit": 0}, "limit"),
        ({"limit": 181}, "limit"),
        ({"end_time": T0}, "end_time"),
        ({"page": "nonsense"}, "page"),
        ({"page": "page_!!!"}, "page"),
        ({"page": "page_MTIz"}, "page"),  # base64 of "123": not a bucket of this query
        ({"start_time": -5}, "start_time"),
    ],
)
def test_costs_page_bad_params_name_the_param(
    filled: Ledger, kwargs: dict[str, Any], param: str
) -> None:
    args: dict[str, Any] = {"start_time": T0, **kwargs}
    with pytest.raises(ClientError) as caught:
        filled.costs_page(**args)
    assert caught.value.param == param
