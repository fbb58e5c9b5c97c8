"""The usage ledger: one record per engine call, durable, and the cost reports read from it.

Every engine call (ASR, LLM, TTS) becomes a :class:`UsageRecord`: who (tenant, key, session,
response), what (stage, engine instance, model, route, units), what it cost (integer
nano-dollars, from :class:`~parley.ledger.prices.PriceTable`), how long it took and how it
ended. :meth:`Ledger.write` commits a turn's records in one transaction and returns only once
they are durable (SQLite WAL: a committed transaction survives the process being killed), so
the caller writes them before it sends ``response.done``.

:meth:`Ledger.costs_page` answers OpenAI's Costs API (``GET /v1/organization/costs``): daily
buckets (UTC), grouped by ``project_id`` (the tenant's name) and/or ``line_item``
(``<stage>:<engine>``). Each bucket is one indexed range query summed in SQL, so a page costs
at most ``limit`` small queries however many records there are. Scoping a caller to its own
tenant is the endpoint's job (``parley.server.costs``); this module trusts ``project_ids``.

Portable SQL only (named parameters, rows by column name): the same code runs on SQLite and
PostgreSQL.
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Final, Literal

from parley.errors import ClientError
from parley.ids import new_id
from parley.ledger.prices import NANO_PER_USD, Units
from parley.store import Database

__all__ = ["BUCKET_WIDTHS", "FIELDS", "GROUP_BY", "Ledger", "Outcome", "UsageRecord"]

# The three, and "cancelled": a call the caller stopped (barge-in, a client that left)
# after the engine had started working; its units are what was consumed up to then.
Outcome = Literal["ok", "error", "failed_over", "cancelled"]
OUTCOMES: Final = ("ok", "error", "failed_over", "cancelled")
GROUP_BY: Final = ("project_id", "line_item")
BUCKET_WIDTHS: Final = {"1d": 86_400}
MAX_LIMIT: Final = 180  # OpenAI's own bound for 1d buckets
DEFAULT_LIMIT: Final = 7
_PAGE_PREFIX = "page_"


@dataclass(frozen=True, slots=True, kw_only=True)
class UsageRecord:
    """One engine call. ``engine`` is the policy's instance name (the configured engine's name
    without a policy); ``cost_nusd`` is in nano-dollars; ``time`` is when the call ended."""

    tenant: str
    stage: str
    engine: str
    outcome: str = "ok"  # an Outcome; checked when the record is made
    key_id: str = ""
    session_id: str = ""
    response_id: str = ""
    model: str = ""
    route: str = ""
    audio_in_s: float = 0.0
    audio_out_s: float = 0.0
    input_tokens: int = 0
    output_tokens: int = 0
    characters: int = 0
    cost_nusd: int = 0
    latency_ms: float | None = None
    id: str = field(default_factory=lambda: new_id("use"))
    time: float = field(default_factory=time.time)

    def __post_init__(self) -> None:
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {OUTCOMES}, not {self.outcome!r}")

    @property
    def cost_usd(self) -> float:
        return self.cost_nusd / NANO_PER_USD

    @property
    def units(self) -> Units:
        return Units(
            self.audio_in_s,
            self.audio_out_s,
            self.input_tokens,
            self.output_tokens,
            self.characters,
        )

    @property
    def line_item(self) -> str:
        return f"{self.stage}:{self.engine}"


# The columns of usage_records, in the order the CSV report prints them.
FIELDS: Final = (
    "id",
    "time",
    "tenant",
    "key_id",
    "session_id",
    "response_id",
    "stage",
    "engine",
    "model",
    "route",
    "audio_in_s",
    "audio_out_s",
    "input_tokens",
    "output_tokens",
    "characters",
    "cost_nusd",
    "latency_ms",
    "outcome",
)
assert set(FIELDS) == {f.name for f in fields(UsageRecord)}

_INSERT = (
    f"INSERT INTO usage_records ({', '.join(FIELDS)}) VALUES ({', '.join(':' + f for f in FIELDS)})"
)


def _record(row: Any) -> UsageRecord:
    values = {name: row[name] for name in FIELDS}
    return UsageRecord(**values)


class Ledger:
    """The usage records of every tenant, in ``db``."""

    def __init__(self, db: Database, *, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    def write(self, records: Sequence[UsageRecord]) -> None:
        """Commit ``records`` in one transaction; they are durable when this returns."""
        if not records:
            return
        with self._db.transaction():
            for record in records:
                self._db.execute(_INSERT, asdict(record))

    def records(
        self,
        *,
        tenant: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> list[UsageRecord]:
        """Records by time (then id), optionally of one tenant, in ``[since, until)``."""
        where, params = _where(tenant=tenant, since=since, until=until)
        rows = self._db.query(
            f"SELECT {', '.join(FIELDS)} FROM usage_records{where} ORDER BY time, id", params
        )
        return [_record(row) for row in rows]

    def costs_page(
        self,
        *,
        start_time: int,
        end_time: int | None = None,
        bucket_width: str = "1d",
        group_by: Sequence[str] = (),
        project_ids: Sequence[str] | None = None,
        limit: int = DEFAULT_LIMIT,
        page: str | None = None,
    ) -> dict[str, Any]:
        """One page of OpenAI's Costs API: ``limit`` daily buckets from ``page`` (or the start).

        Buckets are UTC days; the first is the day holding ``start_time``, the last the day
        holding ``end_time - 1`` (``end_time`` defaults to now), and only records in
        ``[start_time, end_time)`` count. A bucket with no cost has no results. Bad parameters
        raise :class:`~parley.errors.ClientError` naming the parameter.
        """
        width = BUCKET_WIDTHS.get(bucket_width)
        if width is None:
            raise ClientError(
                f"Invalid value for 'bucket_width': {bucket_width!r}; supported: "
                f"{', '.join(BUCKET_WIDTHS)}.",
                param="bucket_width",
            )
        if start_time < 0:
            raise ClientError("'start_time' must be a unix time in seconds.", param="start_time")
        end = int(self._clock()) + 1 if end_time is None else end_time
        if end <= start_time:
            raise ClientError("'end_time' must be after 'start_time'.", param="end_time")
        for g in group_by:
            if g not in GROUP_BY:
                raise ClientError(
                    f"Invalid value for 'group_by': {g!r}; supported: {', '.join(GROUP_BY)}.",
                    param="group_by",
                )
        if not 1 <= limit <= MAX_LIMIT:
            raise ClientError(
                f"Invalid value for 'limit': {limit}; it must be between 1 and {MAX_LIMIT}.",
                param="limit",
            )
        first = start_time - start_time % width
        cursor = first if page is None else _page_start(page)
        if cursor < first or cursor >= end or (cursor - first) % width:
            raise ClientError("Invalid 'page': it is not from this query.", param="page")
        by_project = "project_id" in group_by
        by_item = "line_item" in group_by
        buckets: list[dict[str, Any]] = []
        bucket = cursor
        while bucket < end and len(buckets) < limit:
            lo, hi = max(bucket, start_time), min(bucket + width, end)
            buckets.append(
                {
                    "object": "bucket",
                    "start_time": bucket,
                    "end_time": bucket + width,
                    "results": self._bucket_results(lo, hi, project_ids, by_project, by_item),
                }
            )
            bucket += width
        has_more = bucket < end
        return {
            "object": "page",
            "data": buckets,
            "has_more": has_more,
            "next_page": _page_token(bucket) if has_more else None,
        }

    def _bucket_results(
        self,
        lo: float,
        hi: float,
        project_ids: Sequence[str] | None,
        by_project: bool,
        by_item: bool,
    ) -> list[dict[str, Any]]:
        if project_ids is not None and not project_ids:
            return []
        where, params = _where(since=lo, until=hi, tenants=project_ids)
        rows = self._db.query(
            "SELECT tenant, stage, engine, SUM(cost_nusd) AS nusd, COUNT(*) AS n "
            f"FROM usage_records{where} GROUP BY tenant, stage, engine",
            params,
        )
        sums: dict[tuple[str | None, str | None], int] = {}
        for row in rows:
            group = (
                str(row["tenant"]) if by_project else None,
                f"{row['stage']}:{row['engine']}" if by_item else None,
            )
            sums[group] = sums.get(group, 0) + int(row["nusd"] or 0)
        return [
            {
                "object": "organization.costs.result",
                "amount": {"value": nano / NANO_PER_USD, "currency": "usd"},
                "line_item": item,
                "project_id": project,
            }
            for (project, item), nano in sorted(sums.items(), key=lambda kv: _sort_key(kv[0]))
        ]


def _sort_key(group: tuple[str | None, str | None]) -> tuple[str, str]:
    return group[0] or "", group[1] or ""


def _where(
    *,
    tenant: str | None = None,
    since: float | None = None,
    until: float | None = None,
    tenants: Sequence[str] | None = None,
) -> tuple[str, dict[str, object]]:
    clauses: list[str] = []
    params: dict[str, object] = {}
    if tenant is not None:
        clauses.append("tenant = :tenant")
        params["tenant"] = tenant
    if tenants is not None:
        names = [f":t{i}" for i in range(len(tenants))]
        clauses.append(f"tenant IN ({', '.join(names)})")
        params.update({n[1:]: t for n, t in zip(names, tenants, strict=True)})
    if since is not None:
        clauses.append("time >= :since")
        params["since"] = since
    if until is not None:
        clauses.append("time < :until")
        params["until"] = until
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), params


def _page_token(bucket_start: int) -> str:
    return _PAGE_PREFIX + base64.urlsafe_b64encode(str(bucket_start).encode()).decode().rstrip("=")


def _page_start(page: str) -> int:
    bad = ClientError("Invalid 'page': it is not from this query.", param="page")
    if not page.startswith(_PAGE_PREFIX):
        raise bad
    body = page[len(_PAGE_PREFIX) :]
    try:
        text = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()
        return int(text)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad from None


def as_mapping(record: UsageRecord) -> Mapping[str, object]:
    return {name: getattr(record, name) for name in FIELDS}
