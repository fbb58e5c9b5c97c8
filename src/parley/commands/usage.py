"""``parley usage report`` and ``parley budgets set|list``: the ledger and budgets, from a shell.

Both open the server's database (``server.database``) as ``parley keys`` does, so they work
beside a running server. The report reads usage records (:class:`parley.ledger.Ledger`) and
prints cost by day and by one dimension; ``--csv`` without ``--by`` prints every record.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from rich.console import Console

from parley.bench.report import print_table, require_matplotlib
from parley.commands.options import audit_log, settings_from
from parley.errors import ClientError

__all__ = ["add_usage_parsers", "parse_since", "run_budgets", "run_usage"]

# --by: the dimension and the record field it reads.
DIMENSIONS: Final = {
    "tenant": "tenant",
    "key": "key_id",
    "model": "model",
    "stage": "stage",
    "route": "route",
    "outcome": "outcome",
}
PERIODS: Final = ("day", "month", "total")


def add_usage_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``parley usage`` and ``parley budgets`` to the CLI's subparsers."""
    usage = sub.add_parser(
        "usage",
        parents=[common],
        help="what engine calls cost, from the ledger",
        description="What engine calls cost, from the ledger.",
    )
    usage_actions = usage.add_subparsers(dest="action", required=True, metavar="ACTION")
    report = usage_actions.add_parser(
        "report",
        parents=[common],
        help="cost over time by tenant, key, model, stage, route or outcome",
        description="Cost per day by one dimension, as a table (and a chart with --png). "
        "--csv without --by prints one row per usage record.",
    )
    report.add_argument("--tenant", help="one tenant only")
    report.add_argument("--since", help="from this UTC date (YYYY-MM-DD) or ISO datetime")
    report.add_argument("--by", choices=list(DIMENSIONS), help="the dimension (default: tenant)")
    report.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    report.add_argument(
        "--png",
        type=Path,
        metavar="FILE",
        help="draw cost per day (needs matplotlib: pip install 'parley[bench]')",
    )
    report.set_defaults(run=run_usage)

    budgets = sub.add_parser(
        "budgets",
        parents=[common],
        help="set and list spending limits per tenant or key",
        description="Hard and soft spending limits per tenant or key, enforced before each "
        "engine call.",
    )
    budget_actions = budgets.add_subparsers(dest="action", required=True, metavar="ACTION")
    put = budget_actions.add_parser(
        "set",
        parents=[common],
        help="create or change a budget",
        description="Create or change the budget of a tenant, or of one of its keys.",
    )
    put.add_argument("--tenant", required=True, help="the tenant")
    put.add_argument("--key", dest="key_id", default="", help="one key's id (default: tenant)")
    put.add_argument("--limit-usd", type=float, required=True, help="hard limit, USD per period")
    put.add_argument("--soft-usd", type=float, help="warn past this, USD per period")
    put.add_argument("--period", choices=PERIODS, default="month", help="default: month (UTC)")
    listing = budget_actions.add_parser(
        "list", parents=[common], help="list budgets", description="List budgets."
    )
    listing.add_argument("--tenant", help="one tenant only")
    budgets.set_defaults(run=run_budgets)


def parse_since(text: str) -> float:
    """``YYYY-MM-DD`` (UTC midnight) or an ISO datetime (UTC unless it says otherwise)."""
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ClientError(
            f"--since expects YYYY-MM-DD or an ISO datetime, got {text!r}", param="since"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _day(t: float) -> str:
    return time.strftime("%Y-%m-%d", time.gmtime(t))


async def run_usage(args: argparse.Namespace, console: Console) -> int:
    from parley.ledger import FIELDS, Ledger
    from parley.store import Database

    settings = settings_from(args)
    since = parse_since(args.since) if args.since else None
    if args.png:
        require_matplotlib()  # before reading anything
    with Database(settings.server.database) as database:
        records = Ledger(database).records(tenant=args.tenant, since=since)
    if args.csv and args.by is None:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(FIELDS)
        for record in records:
            out.writerow(["" if (v := getattr(record, f)) is None else v for f in FIELDS])
        return 0
    dimension = args.by or "tenant"
    field = DIMENSIONS[dimension]
    # (day, group) -> (calls, nano-dollars)
    cells: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for record in records:
        cell = cells[_day(record.time), str(getattr(record, field))]
        cell[0] += 1
        cell[1] += record.cost_nusd
    rows = [
        [day, group or "-", str(calls), f"{nano / 1e9:.6f}"]
        for (day, group), (calls, nano) in sorted(cells.items())
    ]
    headers = ["day (UTC)", dimension, "calls", "cost (USD)"]
    if args.csv:
        out = csv.writer(sys.stdout, lineterminator="\n")
        out.writerow(["day", dimension, "calls", "cost_usd"])
        out.writerows(rows)
    elif not rows:
        console.print("no usage recorded" + (f" for tenant {args.tenant}" if args.tenant else ""))
    else:
        total = sum(nano for _, nano in cells.values())
        print_table(console, headers, rows, right={2, 3})
        console.print(f"total: {sum(c for c, _ in cells.values())} calls, ${total / 1e9:.6f}")
    if args.png:
        _draw(cells, dimension, args.png)
        console.print(f"wrote {args.png}", markup=False)
    return 0


def _draw(cells: dict[tuple[str, str], list[int]], dimension: str, path: Path) -> None:
    from matplotlib.figure import Figure

    days = sorted({day for day, _ in cells})
    groups = sorted({group for _, group in cells})
    figure = Figure(figsize=(9, 4.5), layout="constrained")
    axes = figure.subplots()
    bottom = [0.0] * len(days)
    for group in groups:
        heights = [cells[day, group][1] / 1e9 if (day, group) in cells else 0.0 for day in days]
        axes.bar(days, heights, bottom=bottom, label=group or "-")
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    axes.set_ylabel("cost (USD)")
    axes.set_title(f"parley cost per day by {dimension}")
    if groups:
        axes.legend(title=dimension, fontsize="small")
    axes.tick_params(axis="x", labelrotation=45)
    figure.savefig(path, dpi=110)


async def run_budgets(args: argparse.Namespace, console: Console) -> int:
    from parley.ledger import Budgets
    from parley.store import Database
    from parley.store.keys import KeyStore

    settings = settings_from(args)
    with Database(settings.server.database) as database:
        budgets = Budgets(database)
        match args.action:
            case "set":
                if args.key_id:
                    _check_key(KeyStore(database), args.tenant, args.key_id)
                budget = budgets.set(
                    args.tenant,
                    key_id=args.key_id,
                    limit_usd=args.limit_usd,
                    soft_usd=args.soft_usd,
                    period=args.period,
                )
                audit_log(settings, database).append(
                    "budget.set",
                    tenant=budget.tenant,
                    key_id=budget.key_id,
                    period=budget.period,
                    limit_usd=budget.limit_usd,
                    soft_usd=budget.soft_usd,
                )
                who = f"key {budget.key_id} of tenant" if budget.key_id else "tenant"
                soft = "" if budget.soft_usd is None else f", warn past ${budget.soft_usd:g}"
                console.print(
                    f"budget of {who} {budget.tenant}: ${budget.limit_usd:g} per "
                    f"{budget.period}{soft}",
                    markup=False,
                )
            case "list":
                found = budgets.list(args.tenant)
                if not found:
                    console.print("no budgets")
                    return 0
                print_table(
                    console,
                    ["tenant", "key", "period", "limit", "soft", "spent", "reserved", "left"],
                    [_budget_row(b) for b in found],
                    right={3, 4, 5, 6, 7},
                )
    return 0


def _check_key(keys: Any, tenant: str, key_id: str) -> None:
    if key_id not in {key.id for key in keys.list_keys(tenant)}:
        raise ClientError(
            f"tenant {tenant} has no key {key_id} (see 'parley keys list --tenant {tenant}')",
            param="key",
        )


def _budget_row(budget: Any) -> Sequence[str]:
    def money(usd: float | None) -> str:
        return "-" if usd is None else f"{usd:.4f}"

    return [
        budget.tenant or "(default)",
        budget.key_id or "(all)",
        budget.period,
        money(budget.limit_usd),
        money(budget.soft_usd),
        money(budget.spent_usd),
        money(budget.reserved_usd),
        money(budget.remaining_usd),
    ]
