"""Means over seeds with 95% intervals, and paired differences against a baseline.

A comparison table cell is a mean over seeds ± the half-width of its 95% Student-t interval; a run is
compared with its baseline seed by seed (same seed, same partitions, same sampled clients), so the
interval is that of the per-seed differences. A difference whose interval contains 0 is not significant.
A measure made of many items per seed (retention: one outcome per probe fact) also varies with the items:
its interval resamples seeds and items together (:func:`over_seeds_and_items`), so a probe of a few facts
cannot look precise because many seeds agree on them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

LEVEL = 0.95
RESAMPLES = 2000  # bootstrap draws of (seeds, items)


@dataclass(frozen=True)
class Interval:
    """Mean of ``n`` values ± ``half_width`` (95%, Student t); no width from a single value."""

    mean: float
    half_width: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Interval:
        if not values:
            raise ValueError("an interval needs at least one value")
        n, mean = len(values), math.fsum(values) / len(values)
        if n == 1:
            return cls(mean, None, 1)
        spread = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
        return cls(mean, float(stats.t.ppf(0.5 + LEVEL / 2, n - 1)) * spread / math.sqrt(n), n)

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def significant(self) -> bool:
        """Whether the interval excludes 0 (a difference that the seeds support)."""
        return self.half_width is not None and (self.low > 0 or self.high < 0)

    def text(self, digits: int = 4) -> str:
        """``mean ± half`` as a table shows it."""
        return f"{self.mean:,.{digits}f}" + ("" if self.half_width is None else f" ± {self.half_width:,.{digits}f}")

    def to_json(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "n": self.n}

    @classmethod
    def from_json(cls, value: dict) -> Interval:
        return cls(value["mean"], value["ci95"], value["n"])


def paired(values: Sequence[float], baseline: Sequence[float]) -> Interval:
    """The interval of ``values[i] - baseline[i]`` over seeds i."""
    if len(values) != len(baseline):
        raise ValueError(f"paired comparison needs one baseline value per seed ({len(values)} vs {len(baseline)})")
    return Interval.of([v - b for v, b in zip(values, baseline, strict=True)])


def difference_text(difference: Interval, digits: int = 4) -> str:
    """A paired difference as a table shows it: signed, and marked when its interval contains 0."""
    text = f"{difference.mean:+,.{digits}f}" + (
        "" if difference.half_width is None else f" ± {difference.half_width:,.{digits}f}")
    return text if difference.significant() else f"{text} (n.s.)"


def over_seeds_and_items(
    statistic: Callable[[np.ndarray, np.ndarray], float], seeds: int, items: int, seed: int = 0
) -> Interval:
    """``statistic(seed indices, item indices)`` on the data as measured, ± the half-width of a 95% interval from
    a two-way bootstrap: each draw resamples the seeds and, independently, the items (facts), with replacement
    (a normal interval from the draws' spread)."""
    whole = statistic(np.arange(seeds), np.arange(items))
    if seeds * items < 2:
        return Interval(whole, None, seeds * items)
    rng = np.random.default_rng(seed)
    draws = [statistic(rng.integers(0, seeds, seeds), rng.integers(0, items, items)) for _ in range(RESAMPLES)]
    finite = [draw for draw in draws if math.isfinite(draw)]
    spread = float(np.std(finite, ddof=1)) if len(finite) > 1 else None
    return Interval(whole, None if spread is None else float(stats.norm.ppf(0.5 + LEVEL / 2)) * spread, seeds * items)


def fact_matrix(per_seed: Sequence[dict[str, float]]) -> tuple[list[str], np.ndarray]:
    """The items every seed measured (sorted) and a seeds x items array of their values."""
    shared = sorted(set.intersection(*(set(values) for values in per_seed))) if per_seed else []
    return shared, np.array([[values[item] for item in shared] for values in per_seed], dtype=np.float64)
