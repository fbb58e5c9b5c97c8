"""What an engine call costs: the policy's price table, in exact integer nano-dollars.

Prices come from the policy file's ``prices`` mapping, USD per unit::

    prices:
      cloud-llm: {input_token: 0.0000025, output_token: 0.00001}
      asr: {audio_second: 0.0001}
      tts: {character: 0.000015}

A key is an engine instance name (the policy's, e.g. ``cloud-llm``) or a stage (``asr``, ``llm``,
``tts``) standing for the configured engine of that stage. An engine with no price costs 0.

Prices and units are read through their decimal text (``Fraction("0.0000025")``), not their
binary float value, so 0.1 s at 0.0001 USD/s is exactly 10,000 nano-dollars; the total is then
rounded **up** to a whole nano-dollar, so a cost is never under-counted. This module does no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from fractions import Fraction
from typing import Final

from parley.errors import ConfigError

__all__ = ["NANO_PER_USD", "STAGES", "UNITS", "PriceTable", "Units", "nusd", "tokens_bound", "usd"]

NANO_PER_USD: Final = 1_000_000_000
STAGES: Final = ("asr", "llm", "tts")
# Price units, and the Units field each one multiplies (audio seconds are in or out: a price per
# audio second applies to both, ASR hears audio in and TTS makes audio out).
UNITS: Final = ("input_token", "output_token", "audio_second", "character")


@dataclass(frozen=True, slots=True)
class Units:
    """What one engine call consumed (or, for a bound, may consume at most)."""

    audio_in_s: float = 0
    audio_out_s: float = 0
    input_tokens: int = 0
    output_tokens: int = 0
    characters: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"Units.{f.name} must not be negative")


def _exact(x: float | int) -> Fraction:
    """``x`` as its decimal text says (0.1 is one tenth, not the float nearest to it)."""
    return Fraction(x) if isinstance(x, int) else Fraction(repr(float(x)))


def nusd(usd: float) -> int:
    """USD as whole nano-dollars (nearest), for limits typed by a person."""
    return round(_exact(usd) * NANO_PER_USD)


def usd(nano: int) -> float:
    return nano / NANO_PER_USD


def tokens_bound(text: str) -> int:
    """An upper bound of the tokens ``text`` can take in any byte-level BPE tokenizer (a token
    is at least one byte) plus a message's framing tokens; for reserving a budget when the
    engine cannot count."""
    return len(text.encode("utf-8")) + 8


class PriceTable:
    """USD per unit by engine instance or stage; ``PriceTable()`` prices everything at 0.

    ``configured`` (stage -> engine name), when given, limits a stage key to the configured
    engine of that stage: a policy instance without a price of its own is then free. Without it,
    a stage key prices every engine of that stage that has no price of its own.
    """

    def __init__(
        self,
        prices: Mapping[str, Mapping[str, float]] | None = None,
        *,
        configured: Mapping[str, str] | None = None,
    ) -> None:
        self._prices: dict[str, dict[str, Fraction]] = {}
        for key, entry in (prices or {}).items():
            if not isinstance(entry, Mapping):
                raise ConfigError(f"prices.{key} must map units to USD, e.g. {{character: 1e-5}}")
            table: dict[str, Fraction] = {}
            for unit, price in entry.items():
                if unit not in UNITS:
                    raise ConfigError(
                        f"prices.{key}.{unit}: unknown unit; use one of {', '.join(UNITS)}"
                    )
                if isinstance(price, bool) or not isinstance(price, int | float):
                    raise ConfigError(f"prices.{key}.{unit} must be a number (USD per unit)")
                if not math.isfinite(price) or price < 0:
                    raise ConfigError(f"prices.{key}.{unit} must be a finite number >= 0")
                table[unit] = _exact(price) * NANO_PER_USD
            self._prices[str(key)] = table
        self._configured = dict(configured) if configured is not None else None

    def __bool__(self) -> bool:
        """False when every call is free (callers may skip the budget then)."""
        return any(any(p for p in t.values()) for t in self._prices.values())

    def prices_of(self, engine: str, stage: str) -> Mapping[str, Fraction]:
        """Nano-dollars per unit for ``engine`` at ``stage``: its own entry, else its stage's."""
        own = self._prices.get(engine)
        if own is not None:
            return own
        if self._configured is None or self._configured.get(stage) == engine:
            return self._prices.get(stage, {})
        return {}

    def cost_nusd(self, engine: str, stage: str, units: Units) -> int:
        """What ``units`` cost on ``engine``, rounded up to a whole nano-dollar."""
        table = self.prices_of(engine, stage)
        if not table:
            return 0
        zero = Fraction(0)
        audio_s = _exact(units.audio_in_s) + _exact(units.audio_out_s)
        total = (
            table.get("input_token", zero) * units.input_tokens
            + table.get("output_token", zero) * units.output_tokens
            + table.get("audio_second", zero) * audio_s
            + table.get("character", zero) * units.characters
        )
        return math.ceil(total)

    def bound_nusd(self, engine: str | Sequence[str], stage: str, units: Units) -> int:
        """An upper bound of a call's cost, to reserve before making it.

        ``units`` must bound what the call can consume: the input tokens as counted or
        over-estimated (:func:`tokens_bound`), ``max_output_tokens`` as the output tokens, the
        longest audio, every character to speak. Costs only grow with units, so this is
        :meth:`cost_nusd` of those units. ``engine`` may be a failover chain: every engine of it
        may be called and a failed call may still be billed, so the bound is the sum.
        """
        chain = (engine,) if isinstance(engine, str) else tuple(engine)
        return sum(self.cost_nusd(e, stage, units) for e in chain)
