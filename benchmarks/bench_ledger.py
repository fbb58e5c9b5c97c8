"""The ledger's cost per turn, and the budget race: 20 concurrent responses against one limit.

    python benchmarks/bench_ledger.py [--turns 2000] [--database PATH_OR_URL]

**Write overhead.** A turn is three usage records (asr, llm, tts) written in one transaction
(:meth:`Ledger.write`, durable on return) to a SQLite file in WAL; p50/p99 per turn. Also timed:
a turn with a budget (reserve + settle per stage, three of each, the tenant's and the key's
budgets), as the pipeline does it.

**The race.** 20 threads and then 20 OS processes (each its own Database on the same file)
reserve a bound ($0.07) and settle the true cost ($0.05) in a loop against one $1 hard limit;
printed: the limit, the total spent (never above it), calls made and refused, wall time.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from parley.errors import InsufficientQuotaError
from parley.ledger import Budgets, Ledger, UsageRecord
from parley.store import Database

BOUND = 70_000_000
ACTUAL = 50_000_000
CALLS = 5
RACERS = 20
ROOT = Path(__file__).resolve().parents[1]


def record(i: int, stage: str, engine: str, **units: Any) -> UsageRecord:
    return UsageRecord(
        tenant="acme",
        key_id="key_1",
        session_id="sess_1",
        response_id=f"resp_{i}",
        stage=stage,
        engine=engine,
        **units,
    )


def turn_records(i: int) -> list[UsageRecord]:
    return [
        record(i, "asr", "asr", audio_in_s=2.1, cost_nusd=210_000, latency_ms=180.0),
        record(i, "llm", "cloud-llm", input_tokens=812, output_tokens=64, cost_nusd=2_670_000),
        record(i, "tts", "tts", characters=180, cost_nusd=2_700_000, latency_ms=95.0),
    ]


def stats(ms: list[float]) -> dict[str, float]:
    data = np.asarray(ms)
    return {
        "p50": float(np.percentile(data, 50)),
        "p99": float(np.percentile(data, 99)),
        "mean": float(data.mean()),
    }


def bench_writes(where: str, turns: int) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    with Database(where) as db:
        ledger = Ledger(db)
        budgets = Budgets(db)
        batches = [turn_records(i) for i in range(turns)]
        times = []
        for records in batches:
            t0 = time.perf_counter()
            ledger.write(records)
            times.append((time.perf_counter() - t0) * 1000)
        out["write 3 records"] = stats(times)
        budgets.set("acme", limit_usd=1e9)
        budgets.set("acme", key_id="key_1", limit_usd=1e9)
        times = []
        for records in [turn_records(i) for i in range(turns)]:
            t0 = time.perf_counter()
            for r in records:
                reservation = budgets.reserve("acme", "key_1", r.cost_nusd * 2)
                budgets.settle(reservation, r.cost_nusd)
            ledger.write(records)
            times.append((time.perf_counter() - t0) * 1000)
        out["3x reserve+settle (2 budgets) + write"] = stats(times)
        times = []
        for records in [turn_records(i) for i in range(turns)]:
            t0 = time.perf_counter()
            for _ in records:
                budgets.settle(budgets.reserve("other", "key_2", 1), 1)  # no budget: free
            ledger.write(records)
            times.append((time.perf_counter() - t0) * 1000)
        out["3x reserve (no budget) + write"] = stats(times)
    return out


def race_step(budgets: Budgets, tenant: str) -> tuple[int, int]:
    made = refused = 0
    for _ in range(CALLS):
        try:
            reservation = budgets.reserve(tenant, "key_1", BOUND)
        except InsufficientQuotaError:
            refused += 1
            continue
        budgets.settle(reservation, ACTUAL)
        made += 1
    return made, refused


def race_threads(where: str) -> tuple[int, int, float]:
    with Database(where) as db:
        Budgets(db).set("race-threads", limit_usd=1.0)
        results: list[tuple[int, int]] = []
        barrier = threading.Barrier(RACERS)

        def racer() -> None:
            budgets = Budgets(db)
            barrier.wait()
            results.append(race_step(budgets, "race-threads"))

        threads = [threading.Thread(target=racer) for _ in range(RACERS)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        [budget] = Budgets(db).list("race-threads")
        return budget.spent_nusd, sum(r for _, r in results), wall


def race_processes(where: str) -> tuple[int, int, float]:
    with Database(where) as db:
        Budgets(db).set("race-processes", limit_usd=1.0)
    go = time.time() + 3.0
    racer = [sys.executable, __file__, "--racer", where, "race-processes", str(go)]
    procs = [subprocess.Popen(racer, stdout=subprocess.PIPE, text=True) for _ in range(RACERS)]
    refused, wall = 0, 0.0
    for proc in procs:
        out, _ = proc.communicate(timeout=300)
        _, r, w = json.loads(out)
        refused, wall = refused + r, max(wall, w)
    with Database(where) as db:
        [budget] = Budgets(db).list("race-processes")
    return budget.spent_nusd, refused, wall


def racer_process(where: str, tenant: str, go: float) -> None:
    """One racing process (``--racer``): :func:`race_step` on a Database of its own, started
    at ``go`` with the others; prints ``[made, refused, wall s]``."""
    with Database(where) as db:
        budgets = Budgets(db)
        time.sleep(max(0.0, go - time.time()))
        t0 = time.perf_counter()
        made, refused = race_step(budgets, tenant)
        print(json.dumps([made, refused, time.perf_counter() - t0]))


def main() -> None:
    if sys.argv[1:2] == ["--racer"]:
        racer_process(sys.argv[2], sys.argv[3], float(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=2000)
    parser.add_argument("--database", help="a path or postgresql:// URL (default: a temp file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        where = args.database or str(Path(tmp) / "parley.db")
        writes = bench_writes(where, args.turns)
        print(f"## Ledger write overhead per turn ({args.turns} turns, {where.split(':')[0]})\n")
        print("| per turn | p50 ms | p99 ms | mean ms |")
        print("| --- | ---: | ---: | ---: |")
        for name, s in writes.items():
            print(f"| {name} | {s['p50']:.3f} | {s['p99']:.3f} | {s['mean']:.3f} |")
        print(f"\n## Budget race: {RACERS} reservers x {CALLS} calls, bound $0.07, cost $0.05\n")
        print("| racers | limit USD | spent USD | over limit | refused | wall s |")
        print("| --- | ---: | ---: | --- | ---: | ---: |")
        for label, run in (("threads", race_threads), ("processes", race_processes)):
            spent, refused, wall = run(where)
            over = "yes" if spent > 1_000_000_000 else "no"
            print(
                f"| {RACERS} {label} | 1.00 | {spent / 1e9:.2f} | {over} | {refused} | {wall:.2f} |"
            )


if __name__ == "__main__":
    main()
