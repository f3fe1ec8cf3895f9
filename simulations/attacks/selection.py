"""Which simulated clients are malicious: a seeded ``attack-fraction`` of the partitions, fixed for the run."""

from __future__ import annotations

import numpy as np
from flwr.app import Context

from stamen.shared.config import RunConfig

from .base import Attack
from .registry import make_attack


def malicious_partitions(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """round(fraction * n) partition ids, the same for every round and every process."""
    count = round(fraction * num_partitions)
    rng = np.random.default_rng([seed, 0xA77AC])
    return frozenset(int(i) for i in rng.choice(num_partitions, size=count, replace=False))


def attack_for(context: Context, config: RunConfig) -> Attack | None:
    """This node's attack, if the run has one and this simulated node is among the malicious."""
    node = context.node_config
    if config.attack == "none" or "partition-id" not in node:
        return None
    chosen = malicious_partitions(int(node["num-partitions"]), config.attack_fraction, config.seed)
    if int(node["partition-id"]) not in chosen:
        return None
    return make_attack(config.attack, **config.attack_settings())
