"""Budgets: a hard (and optional soft) spending limit per tenant or key, enforced by reservation.

Before each engine call the caller reserves an upper bound of its cost
(:meth:`~parley.ledger.prices.PriceTable.bound_nusd`) against every budget that applies (the
tenant's and the key's); after the call it settles the true cost, which releases the rest.
Spent plus reserved never passes a hard limit, so however many calls race, the money spent
stays within it as long as each call costs at most what it reserved.

**Atomicity.** The check and the reservation are one conditional statement per budget::

    UPDATE budgets SET reserved_nusd = reserved_nusd + :x
    WHERE id = :id AND spent_nusd + reserved_nusd + :x <= limit_nusd

(no row changed: refused), with the tenant's and the key's in one transaction, so either both
are reserved or neither. That holds across threads, processes and, on PostgreSQL, gateway
replicas: the row lock serialises the updates and the condition is checked on the row as it is
when the lock is granted. Budgets are always updated in id order so two reservations cannot
deadlock.

**Periods.** ``day`` and ``month`` are UTC calendar periods, ``total`` never ends. A budget rolls
over lazily: the statement that reserves or settles sees a ``period_start`` older than the
current period and, in the same statement, zeroes ``spent`` and moves ``period_start``; amounts
reserved before the roll-over stay reserved until settled, and a call is charged to the period
it is settled in.

**Crashes.** Each reservation is a row with an expiry; :meth:`Budgets.expire` (run by
:meth:`Budgets.reserve` whenever one is due) releases those of a holder that died.

**Soft limits** warn, they do not refuse: the reservation that first takes spent plus reserved
to the soft limit in a period reports ``soft_crossed`` (once per period: the budget row records
the warning), so the caller can log, count and send ``parley.budget.warning`` once.

Money is integer nano-dollars throughout, so sums and the limit check are exact.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from parley.errors import ClientError, InsufficientQuotaError
from parley.ids import new_id
from parley.ledger.prices import NANO_PER_USD, nusd
from parley.store import Database

__all__ = ["PERIODS", "Budget", "Budgets", "Reservation", "period_start"]

PERIODS: Final = ("day", "month", "total")
DEFAULT_PERIOD: Final = "month"
DEFAULT_RESERVATION_TTL_S: Final = 600.0

_COLUMNS = (
    "id, tenant, key_id, period, limit_nusd, soft_nusd, period_start, spent_nusd, "
    "reserved_nusd, soft_warned_at, created_at"
)
# The roll-over, as expressions over the row before the update (every SET reads the old row).
_ROLLED = "period_start < :start"
_SPENT_NOW = f"CASE WHEN {_ROLLED} THEN 0 ELSE spent_nusd END"
_ROLL_SET = (
    f"soft_warned_at = CASE WHEN {_ROLLED} THEN NULL ELSE soft_warned_at END, "
    f"period_start = CASE WHEN {_ROLLED} THEN :start ELSE period_start END"
)
_RESERVE = (
    f"UPDATE budgets SET spent_nusd = {_SPENT_NOW}, reserved_nusd = reserved_nusd + :x, "
    f"{_ROLL_SET} "
    f"WHERE id = :id AND {_SPENT_NOW} + reserved_nusd + :x <= limit_nusd "
    f"RETURNING {_COLUMNS}"
)
_SETTLE = (
    f"UPDATE budgets SET spent_nusd = {_SPENT_NOW} + :actual, "
    f"reserved_nusd = reserved_nusd - :held, {_ROLL_SET} WHERE id = :id RETURNING {_COLUMNS}"
)


def period_start(period: str, now: float) -> float:
    """Unix seconds the ``period`` holding ``now`` began (UTC); 0 for ``total``."""
    if period == "total":
        return 0.0
    t = datetime.fromtimestamp(now, UTC)
    if period == "day":
        return datetime(t.year, t.month, t.day, tzinfo=UTC).timestamp()
    if period == "month":
        return datetime(t.year, t.month, 1, tzinfo=UTC).timestamp()
    raise ValueError(f"unknown budget period {period!r}")


@dataclass(frozen=True, slots=True)
class Budget:
    """A budget as of when it was read (a rolled-over period shows nothing spent)."""

    id: str
    tenant: str
    key_id: str  # "": the whole tenant
    period: str
    limit_nusd: int
    soft_nusd: int | None
    spent_nusd: int
    reserved_nusd: int
    period_start: float
    created_at: float

    @property
    def limit_usd(self) -> float:
        return self.limit_nusd / NANO_PER_USD

    @property
    def soft_usd(self) -> float | None:
        return None if self.soft_nusd is None else self.soft_nusd / NANO_PER_USD

    @property
    def spent_usd(self) -> float:
        return self.spent_nusd / NANO_PER_USD

    @property
    def reserved_usd(self) -> float:
        return self.reserved_nusd / NANO_PER_USD

    @property
    def remaining_nusd(self) -> int:
        return max(0, self.limit_nusd - self.spent_nusd - self.reserved_nusd)

    @property
    def remaining_usd(self) -> float:
        return self.remaining_nusd / NANO_PER_USD


@dataclass(frozen=True, slots=True)
class Reservation:
    """Money held for one engine call until it is settled or released.

    ``ids[i]`` is the reservation row held against ``budgets[i]``; a call no budget applies to
    gets a free reservation (no ids), which settles without touching the database.
    """

    tenant: str
    key_id: str
    amount_nusd: int
    ids: tuple[str, ...] = ()
    budgets: tuple[Budget, ...] = ()  # as they stood right after reserving
    soft_crossed: bool = False  # this reservation took a budget to its soft limit

    @property
    def free(self) -> bool:
        return not self.ids

    @property
    def budget_ids(self) -> tuple[str, ...]:
        return tuple(b.id for b in self.budgets)


def _budget(row: Any, now: float | None = None) -> Budget:
    spent, start = int(row["spent_nusd"]), float(row["period_start"])
    if now is not None and row["period"] != "total":
        current = period_start(str(row["period"]), now)
        if start < current:  # rolled over, not yet written back
            spent, start = 0, current
    return Budget(
        id=str(row["id"]),
        tenant=str(row["tenant"]),
        key_id=str(row["key_id"]),
        period=str(row["period"]),
        limit_nusd=int(row["limit_nusd"]),
        soft_nusd=None if row["soft_nusd"] is None else int(row["soft_nusd"]),
        spent_nusd=spent,
        reserved_nusd=int(row["reserved_nusd"]),
        period_start=start,
        created_at=float(row["created_at"]),
    )


def _describe(budget: Budget) -> str:
    who = f"tenant {budget.tenant!r}" + (f", key {budget.key_id}" if budget.key_id else "")
    period = {"day": "daily", "month": "monthly", "total": "total"}[budget.period]
    return f"the {period} budget of {who} (${budget.limit_usd:g})"


class Budgets:
    """Every tenant's and key's budget, in ``db``; safe from many threads and processes."""

    def __init__(
        self,
        db: Database,
        *,
        clock: Callable[[], float] = time.time,
        reservation_ttl_s: float = DEFAULT_RESERVATION_TTL_S,
    ) -> None:
        if reservation_ttl_s <= 0:
            raise ValueError("reservation_ttl_s must be positive")
        self._db = db
        self._clock = clock
        self._ttl = reservation_ttl_s

    # --- the operator's side -------------------------------------------------------------------

    def set(
        self,
        tenant: str,
        *,
        key_id: str = "",
        limit_usd: float,
        soft_usd: float | None = None,
        period: str = DEFAULT_PERIOD,
    ) -> Budget:
        """Create or change the budget of ``tenant`` (of one of its keys with ``key_id``).

        Changing the period starts a new one with nothing spent; changing the soft limit lets it
        warn again. Amounts reserved now stay reserved.
        """
        if period not in PERIODS:
            raise ClientError(
                f"unknown budget period {period!r}; use one of {', '.join(PERIODS)}",
                param="period",
            )
        if not limit_usd >= 0:
            raise ClientError("the limit must be a number of USD >= 0", param="limit_usd")
        if soft_usd is not None and not 0 <= soft_usd <= limit_usd:
            raise ClientError("the soft limit must be between 0 and the limit", param="soft_usd")
        now = self._clock()
        start = now if period == "total" else period_start(period, now)
        with self._db.transaction():
            rows = self._db.query(
                "INSERT INTO budgets (id, tenant, key_id, period, limit_nusd, soft_nusd, "
                "period_start, created_at) "
                "VALUES (:id, :tenant, :key_id, :period, :limit, :soft, :start, :now) "
                "ON CONFLICT (tenant, key_id) DO UPDATE SET "
                "limit_nusd = excluded.limit_nusd, soft_nusd = excluded.soft_nusd, "
                "soft_warned_at = CASE WHEN budgets.soft_nusd = excluded.soft_nusd "
                "AND budgets.period = excluded.period THEN budgets.soft_warned_at ELSE NULL END, "
                "spent_nusd = CASE WHEN budgets.period = excluded.period "
                "THEN budgets.spent_nusd ELSE 0 END, "
                "period_start = CASE WHEN budgets.period = excluded.period "
                "THEN budgets.period_start ELSE excluded.period_start END, "
                "period = excluded.period "
                f"RETURNING {_COLUMNS}",
                {
                    "id": new_id("bud"),
                    "tenant": tenant,
                    "key_id": key_id,
                    "period": period,
                    "limit": nusd(limit_usd),
                    "soft": None if soft_usd is None else nusd(soft_usd),
                    "start": start,
                    "now": now,
                },
            )
        return _budget(rows[0], now)

    def list(self, tenant: str | None = None) -> list[Budget]:
        """Budgets by tenant then key (the tenant's own first), as of now."""
        where = " WHERE tenant = :tenant" if tenant is not None else ""
        rows = self._db.query(
            f"SELECT {_COLUMNS} FROM budgets{where} ORDER BY tenant, key_id", {"tenant": tenant}
        )
        now = self._clock()
        return [_budget(row, now) for row in rows]

    # --- around each engine call ---------------------------------------------------------------

    def reserve(self, tenant: str, key_id: str, amount_nusd: int) -> Reservation:
        """Hold ``amount_nusd`` against every budget of ``tenant`` and ``key_id``, atomically.

        Raises :class:`~parley.errors.InsufficientQuotaError` when any of them would pass its
        hard limit; nothing is reserved then. With no budget, a free reservation (one read).
        """
        if amount_nusd < 0:
            raise ValueError("a reservation cannot be negative")
        found = self._db.query(
            "SELECT id, period FROM budgets WHERE tenant = :tenant AND key_id IN ('', :key_id) "
            "ORDER BY id",
            {"tenant": tenant, "key_id": key_id},
        )
        if not found:
            return Reservation(tenant, key_id, amount_nusd)
        now = self._clock()
        due = self._db.query(
            "SELECT id FROM budget_reservations WHERE expires_at <= :now LIMIT 1", {"now": now}
        )
        if due:
            self.expire()
        ids: list[str] = []
        held: list[Budget] = []
        crossed = False
        refused: Budget | None = None
        with self._db.transaction():
            for row in found:
                start = period_start(str(row["period"]), now)
                rows = self._db.query(_RESERVE, {"id": row["id"], "x": amount_nusd, "start": start})
                if not rows:
                    refused = self._get(str(row["id"]), now)
                    if refused is None:  # deleted since it was found: it no longer applies
                        continue
                    break
                budget = _budget(rows[0])
                if (
                    budget.soft_nusd is not None
                    and budget.spent_nusd + budget.reserved_nusd >= budget.soft_nusd
                    and rows[0]["soft_warned_at"] is None
                ):
                    crossed |= (
                        self._db.execute(
                            "UPDATE budgets SET soft_warned_at = :now "
                            "WHERE id = :id AND soft_warned_at IS NULL",
                            {"id": budget.id, "now": now},
                        )
                        == 1
                    )
                reservation_id = new_id("res")
                self._db.execute(
                    "INSERT INTO budget_reservations (id, budget_id, amount_nusd, created_at, "
                    "expires_at) VALUES (:id, :budget_id, :amount, :now, :expires)",
                    {
                        "id": reservation_id,
                        "budget_id": budget.id,
                        "amount": amount_nusd,
                        "now": now,
                        "expires": now + self._ttl,
                    },
                )
                ids.append(reservation_id)
                held.append(budget)
            if refused is not None:
                # Undo the budgets reserved before this one: the transaction rolls back.
                raise InsufficientQuotaError(
                    f"You exceeded your current quota: {_describe(refused)} has "
                    f"${refused.remaining_usd:.6f} left this period, and this call may cost "
                    f"up to ${amount_nusd / NANO_PER_USD:.6f}. Raise it with 'parley budgets "
                    "set' or wait for the next period."
                )
        return Reservation(tenant, key_id, amount_nusd, tuple(ids), tuple(held), crossed)

    def settle(self, reservation: Reservation, actual_nusd: int) -> tuple[Budget, ...]:
        """Charge ``actual_nusd`` and release the reservation, in one transaction; returns the
        budgets as they stand after. A cost above the amount reserved is charged in full (the
        ledger records the truth), so callers must reserve a true upper bound."""
        if actual_nusd < 0:
            raise ValueError("a cost cannot be negative")
        if reservation.free:
            return ()
        now = self._clock()
        after: list[Budget] = []
        with self._db.transaction():
            for reservation_id, budget in zip(reservation.ids, reservation.budgets, strict=True):
                # Gone already if it expired and was released: then only the charge remains.
                deleted = self._db.execute(
                    "DELETE FROM budget_reservations WHERE id = :id", {"id": reservation_id}
                )
                rows = self._db.query(
                    _SETTLE,
                    {
                        "id": budget.id,
                        "actual": actual_nusd,
                        "held": reservation.amount_nusd if deleted == 1 else 0,
                        "start": period_start(budget.period, now),
                    },
                )
                if rows:
                    after.append(_budget(rows[0]))
        return tuple(after)

    def release(self, reservation: Reservation) -> tuple[Budget, ...]:
        """Give the whole reservation back (the call was not made, or cost nothing)."""
        return self.settle(reservation, 0)

    def expire(self) -> int:
        """Release the reservations past their expiry (their holder died); how many."""
        with self._db.transaction():
            rows = self._db.query(
                "DELETE FROM budget_reservations WHERE expires_at <= :now "
                "RETURNING budget_id, amount_nusd",
                {"now": self._clock()},
            )
            held: dict[str, int] = {}
            for row in rows:
                held[str(row["budget_id"])] = held.get(str(row["budget_id"]), 0) + int(
                    row["amount_nusd"]
                )
            for budget_id in sorted(held):
                self._db.execute(
                    "UPDATE budgets SET reserved_nusd = reserved_nusd - :x WHERE id = :id",
                    {"id": budget_id, "x": held[budget_id]},
                )
        return len(rows)

    def _get(self, budget_id: str, now: float) -> Budget | None:
        rows = self._db.query(f"SELECT {_COLUMNS} FROM budgets WHERE id = :id", {"id": budget_id})
        return _budget(rows[0], now) if rows else None
