"""Which simulated clients are malicious: a seeded ``attack-fraction`` of the partitions, fixed for the run and drawn
afresh for each seed, so a result over seeds is not one set of attackers' result."""

from __future__ import annotations

import random

from flwr.app import Context

from stamen.shared.config import RunConfig

from .base import Attack
from .registry import make_attack


def malicious_partitions(num_partitions: int, fraction: float, seed: int) -> frozenset[int]:
    """round(fraction * n) partition ids, the same for every round and every process of a run. Consecutive seeds
    take consecutive blocks of one fixed shuffle of the partitions, so each seed moves the attackers and, over
    n / count seeds, every partition is malicious as often as any other (a generator seeded with the seed drew
    partitions 0 and 2 of 6 for seeds 0, 1 and 2 alike)."""
    count = round(fraction * num_partitions)
    order = random.Random(f"stamen-attackers/{num_partitions}").sample(range(num_partitions), num_partitions)
    return frozenset(order[(seed * count + k) % num_partitions] for k in range(count))


def attack_for(context: Context, config: RunConfig) -> Attack | None:
    """This node's attack, if the run has one and this simulated node is among the malicious."""
    node = context.node_config
    if config.attack.name == "none" or "partition-id" not in node:
        return None
    chosen = malicious_partitions(int(node["num-partitions"]), config.attack.fraction, config.seed)
    if int(node["partition-id"]) not in chosen:
        return None
    return make_attack(config.attack.name, **config.attack.settings())
