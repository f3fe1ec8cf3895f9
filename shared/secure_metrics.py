"""Metrics summed inside the masked vector, so the server learns their weighted mean over a round, not one client's.

Under secure aggregation a client's reply names its metrics (names are code and config, not data) and
keeps their values; the server sums only the names every client in the round reported, so each
summed value mixes all survivors. A metric travels as ``weight * value / bound`` in one slot after the
weight (see :func:`~stamen.shared.secagg_protocol.update_vector`): ``bound`` depends on the name's kind
(below), so a loss keeps about six digits under a 32-bit modulus. A value beyond its bound is clipped
to it, and the client logs that.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

BOUNDS_BY_SUFFIX = (("-loss", 50.0), ("-gain", 50.0), ("-ppl", 1e5), ("-seconds", 1e5), ("-steps", 1e5),
                    ("forgetting", 50.0), ("-transfer", 50.0), ("retention", 1.0), ("-rate", 1.0))
"""The largest magnitude of a metric by how its name ends (first match); losses of a causal LM stay
below ln(vocabulary) << 50, and a perplexity beyond 1e5 is a broken model whichever value it has."""
DEFAULT_BOUND = 1e7  # counts: steps, tokens, examples


def metric_bound(name: str) -> float:
    """The magnitude a summed metric named ``name`` is clipped to."""
    return next((bound for suffix, bound in BOUNDS_BY_SUFFIX if name.endswith(suffix)), DEFAULT_BOUND)


def common_names(name_lists: Iterable[Sequence[str]]) -> tuple[str, ...]:
    """The metric names every client reported, sorted: the ones a round sums."""
    lists = [set(names) for names in name_lists]
    return tuple(sorted(set.intersection(*lists))) if lists else ()


def metric_slots(metrics: Mapping[str, float], weight: float) -> dict[str, float]:
    """Each metric as the value its slot carries, ``weight * value / bound``, clipped to [-weight, weight]."""
    slots, clipped = {}, []
    for name, value in metrics.items():
        bound = metric_bound(name)
        if abs(value) > bound:
            clipped.append(name)
        slots[name] = weight * float(np.clip(value, -bound, bound)) / bound
    if clipped:
        log.warning("metrics %s exceed their bounds for secure summing and are clipped", clipped)
    return slots


def metric_means(
    slot_sums: np.ndarray, names: Sequence[str], total_weight: float, tolerance: float
) -> dict[str, float]:
    """The weighted means of ``names`` from the decoded sums of their slots, each rounded to the decimals
    that the codec's ``tolerance`` (largest error of one decoded sum) leaves it."""
    if total_weight <= 0:
        return {}
    means = {}
    for name, value in zip(names, slot_sums, strict=True):
        mean, error = float(value) * metric_bound(name) / total_weight, metric_bound(name) * tolerance / total_weight
        means[name] = round(mean, -math.floor(math.log10(error))) if error > 0 else mean
    return means
