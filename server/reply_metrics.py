"""The metrics a round's rows show: one reply's, the accepted replies' weighted means, the round-0 baseline."""

from __future__ import annotations

from typing import Any

from flwr.app import Message, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from stamen.shared.metrics import INITIAL_PREFIX, column
from stamen.shared.protocol import HELDOUT_EXAMPLES, METRICS, NUM_EXAMPLES


def client_metrics(msg: Message) -> dict[str, Any]:
    """A plain reply's metrics, as row columns."""
    return {column(k): v for k, v in msg.content[METRICS].items()}


def mean_metrics(accepted: list[RecordDict]) -> MetricRecord | None:
    """The example-weighted mean of the accepted replies' ``metrics`` records (Flower's, given only those)."""
    if not accepted:
        return None
    return aggregate_metricrecords([RecordDict({METRICS: content[METRICS]}) for content in accepted], NUM_EXAMPLES)


def initial_losses(metrics: list[MetricRecord]) -> dict[str, float]:
    """Round-0 baseline: ``initial-*`` losses weighted by held-out size, as evaluation weights them."""
    reporting = [m for m in metrics if HELDOUT_EXAMPLES in m]
    total = sum(float(m[HELDOUT_EXAMPLES]) for m in reporting)
    if not total:
        return {}
    keys = {k for m in reporting for k in m if k.startswith(INITIAL_PREFIX)}
    return {
        column(k): sum(float(m[HELDOUT_EXAMPLES]) * float(m[k]) for m in reporting if k in m) / total
        for k in sorted(keys)
    }


def initial_means(means: dict[str, float]) -> dict[str, float]:
    """The round-0 baseline among a secure sum's metric means (already weighted like the rest)."""
    return {column(k): v for k, v in means.items() if k.startswith(INITIAL_PREFIX)}
