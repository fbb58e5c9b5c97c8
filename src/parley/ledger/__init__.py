"""Usage records, the price table, budgets with reservations, and the cost reports.

Every engine call is priced (:class:`PriceTable`, integer nano-dollars), reserved against the
budgets that apply before it runs (:class:`Budgets`), settled after, and recorded
(:class:`Ledger`). This package knows nothing of wires or engines: the pipeline calls it, the
server and the CLI read it.
"""

from parley.ledger.budgets import PERIODS, Budget, Budgets, Reservation, period_start
from parley.ledger.prices import NANO_PER_USD, PriceTable, Units, nusd, tokens_bound, usd
from parley.ledger.records import FIELDS, Ledger, Outcome, UsageRecord

__all__ = [
    "FIELDS",
    "NANO_PER_USD",
    "PERIODS",
    "Budget",
    "Budgets",
    "Ledger",
    "Outcome",
    "PriceTable",
    "Reservation",
    "Units",
    "UsageRecord",
    "nusd",
    "period_start",
    "tokens_bound",
    "usd",
]
