"""Budgets: set and list, periods, soft warnings, hard refusals, settling, expiry, and the race."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from parley.errors import ClientError, InsufficientQuotaError
from parley.ledger import NANO_PER_USD, Budgets, period_start
from parley.store import Database

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
DAY = 86_400.0
ROOT = Path(__file__).resolve().parents[2]
USD = NANO_PER_USD


class Clock:
    def __init__(self, now: float = T0 + 3600) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_budgets_set_and_list(database: Database) -> None:
    budgets = Budgets(database, clock=Clock())
    tenant = budgets.set("acme", limit_usd=10, soft_usd=8)
    key = budgets.set("acme", key_id="key_1", limit_usd=2, period="day")
    budgets.set("globex", limit_usd=1, period="total")
    assert tenant.period == "month" and tenant.limit_usd == 10 and tenant.soft_usd == 8
    assert tenant.period_start == T0 and key.period_start == T0
    assert tenant.remaining_usd == 10 and tenant.spent_usd == 0 and tenant.reserved_usd == 0
    assert [(b.tenant, b.key_id) for b in budgets.list()] == [
        ("acme", ""),
        ("acme", "key_1"),
        ("globex", ""),
    ]
    assert [b.key_id for b in budgets.list("acme")] == ["", "key_1"]
    changed = budgets.set("acme", limit_usd=20)
    assert changed.id == tenant.id and changed.limit_usd == 20 and changed.soft_usd is None
    assert len(budgets.list()) == 3


@pytest.mark.parametrize(
    ("kwargs", "param"),
    [
        ({"limit_usd": 1, "period": "week"}, "period"),
        ({"limit_usd": -1}, "limit_usd"),
        ({"limit_usd": float("nan")}, "limit_usd"),
        ({"limit_usd": 1, "soft_usd": 2}, "soft_usd"),
    ],
)
def test_budgets_set_refuses_bad_values(
    database: Database, kwargs: dict[str, object], param: str
) -> None:
    with pytest.raises(ClientError) as caught:
        Budgets(database).set("acme", **kwargs)  # type: ignore[arg-type]
    assert caught.value.param == param


def test_budgets_no_budget_is_a_free_reservation(database: Database) -> None:
    budgets = Budgets(database)
    reservation = budgets.reserve("acme", "key_1", 10**12)
    assert reservation.free and reservation.budget_ids == () and not reservation.soft_crossed
    assert budgets.settle(reservation, 10**12) == ()


def test_budgets_settle_and_release_arithmetic(database: Database) -> None:
    budgets = Budgets(database, clock=Clock())
    budgets.set("acme", limit_usd=1)
    budgets.set("acme", key_id="key_1", limit_usd=1)
    held = budgets.reserve("acme", "key_1", 300_000_000)
    assert len(held.ids) == 2 and {b.reserved_nusd for b in held.budgets} == {300_000_000}
    after = budgets.settle(held, 120_000_000)
    assert {(b.spent_nusd, b.reserved_nusd) for b in after} == {(120_000_000, 0)}
    other_key = budgets.reserve("acme", "key_2", 100_000_000)  # only the tenant's applies
    assert len(other_key.ids) == 1
    budgets.release(other_key)
    [tenant, key] = budgets.list("acme")
    assert (tenant.spent_nusd, tenant.reserved_nusd) == (120_000_000, 0)
    assert (key.spent_nusd, key.reserved_nusd) == (120_000_000, 0)
    assert tenant.remaining_nusd == 880_000_000
    assert database.query("SELECT COUNT(*) AS n FROM budget_reservations")[0]["n"] == 0


def test_budgets_hard_limit_refuses_and_reserves_nothing(database: Database) -> None:
    budgets = Budgets(database, clock=Clock())
    budgets.set("acme", limit_usd=10)
    budgets.set("acme", key_id="key_1", limit_usd=1)
    first = budgets.reserve("acme", "key_1", 600_000_000)
    with pytest.raises(InsufficientQuotaError) as caught:
        budgets.reserve("acme", "key_1", 600_000_000)  # the tenant's has room, the key's not
    assert caught.value.code == "insufficient_quota" and caught.value.type == "insufficient_quota"
    assert caught.value.status == 429 and "key_1" in caught.value.message
    [tenant, key] = budgets.list("acme")
    assert tenant.reserved_nusd == key.reserved_nusd == 600_000_000  # nothing of the refused
    assert database.query("SELECT COUNT(*) AS n FROM budget_reservations")[0]["n"] == 2
    budgets.settle(first, 600_000_000)
    budgets.reserve("acme", "key_1", 400_000_000)  # exactly up to the limit is allowed
    with pytest.raises(InsufficientQuotaError):
        budgets.reserve("acme", "key_1", 1)


def test_budgets_soft_limit_crossing_is_reported_once(database: Database) -> None:
    clock = Clock()
    budgets = Budgets(database, clock=clock)
    budgets.set("acme", limit_usd=10, soft_usd=5, period="day")
    below = budgets.reserve("acme", "k", 4 * USD)
    assert not below.soft_crossed
    crossing = budgets.reserve("acme", "k", 2 * USD)
    assert crossing.soft_crossed
    budgets.release(crossing)  # below the soft limit again, then over it again: no new warning
    assert not budgets.reserve("acme", "k", 2 * USD).soft_crossed
    clock.now += DAY  # a new day (yesterday's reservations have expired): it warns again
    assert budgets.reserve("acme", "k", 6 * USD).soft_crossed
    assert not budgets.reserve("acme", "k", 1 * USD).soft_crossed  # 7 of 10 held
    budgets.set("acme", limit_usd=10, soft_usd=8, period="day")  # a new soft limit warns anew
    assert not budgets.reserve("acme", "k", USD // 2).soft_crossed  # 7.5
    budgets.set("acme", limit_usd=10, soft_usd=8, period="day")  # the same one changes nothing
    assert budgets.reserve("acme", "k", USD // 2).soft_crossed  # 8
    budgets.set("acme", limit_usd=10, soft_usd=8, period="day")
    assert not budgets.reserve("acme", "k", USD // 2).soft_crossed  # warned already


def test_budgets_periods_roll_over(database: Database) -> None:
    clock = Clock(T0 + 10 * DAY + 5)  # 2026-01-11
    budgets = Budgets(database, clock=clock)
    budgets.set("d", limit_usd=1, period="day")
    budgets.set("m", limit_usd=1, period="month")
    budgets.set("t", limit_usd=1, period="total")
    for tenant in ("d", "m", "t"):
        budgets.settle(budgets.reserve(tenant, "", USD), USD)
    carried = budgets.reserve("d", "", 0)  # a reservation held across the roll-over
    clock.now += DAY  # 2026-01-12
    assert {b.tenant: b.spent_nusd for b in budgets.list()} == {"d": 0, "m": USD, "t": USD}
    budgets.settle(budgets.reserve("d", "", USD), USD)
    for tenant in ("m", "t"):
        with pytest.raises(InsufficientQuotaError):
            budgets.reserve(tenant, "", 1)
    clock.now = T0 + 31 * DAY + 1  # 2026-02-01
    budgets.settle(budgets.reserve("m", "", USD), USD)
    with pytest.raises(InsufficientQuotaError):
        budgets.reserve("t", "", 1)
    [d] = budgets.list("d")
    assert d.period_start == T0 + 31 * DAY and d.spent_nusd == 0
    budgets.settle(carried, 0)
    assert budgets.list("d")[0].reserved_nusd == 0


def test_budgets_period_start_is_the_utc_calendar() -> None:
    mid_feb = T0 + 31 * DAY + 14 * DAY + 3600 * 13.5
    assert period_start("day", mid_feb) == T0 + 45 * DAY
    assert period_start("month", mid_feb) == T0 + 31 * DAY
    assert period_start("total", mid_feb) == 0
    with pytest.raises(ValueError):
        period_start("week", mid_feb)


def test_budgets_changing_the_period_starts_afresh(database: Database) -> None:
    budgets = Budgets(database, clock=Clock())
    budgets.set("acme", limit_usd=1)
    budgets.settle(budgets.reserve("acme", "", USD), USD)
    assert budgets.set("acme", limit_usd=1).spent_nusd == USD
    assert budgets.set("acme", limit_usd=1, period="day").spent_nusd == 0


def test_budgets_expired_reservations_are_released(database: Database) -> None:
    clock = Clock()
    budgets = Budgets(database, clock=clock, reservation_ttl_s=60)
    budgets.set("acme", limit_usd=1)
    lost = budgets.reserve("acme", "", USD)  # its holder dies without settling
    with pytest.raises(InsufficientQuotaError):
        budgets.reserve("acme", "", 1)
    assert budgets.expire() == 0
    clock.now += 61
    held = budgets.reserve("acme", "", USD // 2)  # reserve releases the expired one first
    assert budgets.list()[0].reserved_nusd == USD // 2
    budgets.settle(lost, 10)  # a late settle of a released reservation charges, frees nothing
    budgets.settle(held, 20)
    [after] = budgets.list()
    assert (after.spent_nusd, after.reserved_nusd) == (30, 0)
    clock.now += 61
    budgets.reserve("acme", "", 5)
    clock.now += 61
    assert budgets.expire() == 1
    assert budgets.list()[0].reserved_nusd == 0


# --- the race: 20 concurrent responses against one hard limit ------------------------------------

LIMIT_USD = 1.0
BOUND = 70_000_000  # each call may cost up to $0.07 ...
ACTUAL = 50_000_000  # ... and costs $0.05
CALLS = 5  # per reserver


def _race_step(budgets: Budgets) -> tuple[int, int]:
    """One reserver: CALLS calls of reserve, settle; (calls made, calls refused)."""
    made = refused = 0
    for _ in range(CALLS):
        try:
            reservation = budgets.reserve("acme", "key_1", BOUND)
        except InsufficientQuotaError:
            refused += 1
            continue
        budgets.settle(reservation, ACTUAL)
        made += 1
    return made, refused


def _check_race(database: Database, made: int, refused: int) -> None:
    [budget] = Budgets(database).list("acme")
    assert budget.reserved_nusd == 0
    assert budget.spent_nusd == made * ACTUAL
    assert budget.spent_nusd <= budget.limit_nusd
    assert made + refused == 20 * CALLS and refused > 0
    # Every refusal came when less than a bound was left: no call was refused for nothing.
    assert budget.limit_nusd - budget.spent_nusd < BOUND


def test_budgets_race_threads_never_overspend(database: Database) -> None:
    Budgets(database).set("acme", limit_usd=LIMIT_USD)
    results: list[tuple[int, int]] = []
    start = threading.Barrier(20)

    def reserver() -> None:
        budgets = Budgets(database)
        start.wait()
        results.append(_race_step(budgets))

    threads = [threading.Thread(target=reserver) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 20
    _check_race(database, sum(m for m, _ in results), sum(r for _, r in results))


RACER = textwrap.dedent(
    """
    import json, sys, time
    from parley.errors import InsufficientQuotaError
    from parley.ledger import Budgets
    from parley.store import Database
    where, go, bound, actual, calls = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:])
    made = refused = 0
    with Database(where) as db:
        budgets = Budgets(db)
        time.sleep(max(0.0, go - time.time()))
        for _ in range(calls):
            try:
                r = budgets.reserve("acme", "key_1", bound)
            except InsufficientQuotaError:
                refused += 1
                continue
            budgets.settle(r, actual)
            made += 1
    print(json.dumps([made, refused]))
    """
)


def test_budgets_race_processes_never_overspend(database: Database, database_url: str) -> None:
    import time

    Budgets(database).set("acme", limit_usd=LIMIT_USD)
    go = time.time() + 3.0  # every process has opened its database by then
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                RACER,
                database_url,
                str(go),
                str(BOUND),
                str(ACTUAL),
                str(CALLS),
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(20)
    ]
    made = refused = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        m, r = json.loads(out)
        made, refused = made + m, refused + r
    _check_race(database, made, refused)
