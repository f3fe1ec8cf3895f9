"""FedAvgM (Hsu et al. 2019): server momentum on the mean delta."""

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import AggregationRule, Arrays
from .registry import register


@register("fedavgm")
class FedAvgM(AggregationRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"server_lr": 1.0, "momentum": 0.9}

    def __init__(self, **options: float) -> None:
        super().__init__(**options)
        self.velocity: Arrays = {}

    def step(self, global_adapter: Arrays, mean_delta: Arrays) -> Arrays:
        beta, lr = self.options["momentum"], self.options["server_lr"]
        for k, delta in mean_delta.items():
            self.velocity[k] = beta * self.velocity.get(k, np.zeros_like(delta)) + delta
        return {k: global_adapter[k] + lr * self.velocity[k] for k in global_adapter}

    def state_dict(self) -> dict[str, Any]:
        return {f"velocity/{k}": v for k, v in self.velocity.items()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.velocity = {k.split("/", 1)[1]: np.asarray(v) for k, v in state.items() if k.startswith("velocity/")}
