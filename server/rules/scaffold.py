"""SCAFFOLD (Karimireddy et al. 2020, option II): control variates correct client drift.

The server keeps c and sends it with the global adapter; each client keeps its own
c_i on the device, corrects every local gradient by (c - c_i), and uploads the delta
of its adapter and of c_i. Server: x <- x + lr * mean(dy);  c <- c + |S|/N * mean(dc),
both means uniform over the sampled clients as in the paper (under secure aggregation both are summed
in the masked vector and weighted by the secure weights).
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from stamen.shared.protocol import CONTROL, CONTROL_DELTA, SCAFFOLD

from ..accumulator import WeightedMean
from .base import AggregationRule, Arrays, ClientUpdate
from .registry import register


@register(SCAFFOLD)
class Scaffold(AggregationRule):
    extra_uploads = (CONTROL_DELTA,)

    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"server_lr": 1.0}

    def __init__(self, **options: float) -> None:
        super().__init__(**options)
        self.control: Arrays = {}
        self._control_mean = WeightedMean()
        self._num_clients = 1

    def initialise(self, global_adapter: Arrays) -> None:
        self.control = {k: np.zeros_like(v) for k, v in global_adapter.items()}

    def start_round(self, server_round: int, num_clients: int) -> None:
        super().start_round(server_round, num_clients)
        self._control_mean = WeightedMean()
        self._num_clients = max(num_clients, 1)

    def add(self, update: ClientUpdate) -> None:
        # the paper averages both deltas uniformly over the sampled clients
        self._mean.add(update.delta, 1.0)
        self._control_mean.add(update.extras[CONTROL_DELTA], 1.0)

    def add_sum(self, weighted_sum: Arrays, total_weight: float, count: int,
                extras: Mapping[str, Arrays] | None = None) -> None:
        """A secure sum: both means weighted by the clients' secure weights, the uniform mean's stand-in (no
        client's count is known)."""
        super().add_sum(weighted_sum, total_weight, count)
        self._control_mean.add_sum(extras[CONTROL_DELTA], total_weight, count)

    def finish_round(self, global_adapter: Arrays) -> Arrays:
        share = self._control_mean.count / self._num_clients
        for k, dc in self._control_mean.mean().items():
            self.control[k] = self.control[k] + share * dc
        lr = self.options["server_lr"]
        return {k: global_adapter[k] + lr * d for k, d in self._mean.mean().items()}

    def downloads(self) -> dict[str, Arrays]:
        return {CONTROL: self.control}

    def state_dict(self) -> dict[str, Any]:
        return {f"control/{k}": v for k, v in self.control.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.control = {k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("control/")}
