"""Percentile summaries, the one way parley reports a distribution."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Summary", "summarize"]


@dataclass(frozen=True, slots=True)
class Summary:
    n: int
    p50: float
    p95: float
    mean: float
    max: float

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in asdict(self).items()}

    def __str__(self) -> str:
        return f"p50 {self.p50:.2f}  p95 {self.p95:.2f}  mean {self.mean:.2f}  (n={self.n})"


def summarize(values: Iterable[float]) -> Summary:
    data = np.asarray(list(values), dtype=np.float64)
    if data.size == 0:
        nan = float("nan")
        return Summary(0, nan, nan, nan, nan)
    p50, p95 = np.percentile(data, [50, 95])
    return Summary(int(data.size), float(p50), float(p95), float(data.mean()), float(data.max()))
