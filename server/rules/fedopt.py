"""Adaptive server optimisers (Reddi et al. 2021) on the mean delta, the "pseudo-gradient".

m <- b1*m + (1-b1)*d;  v <- second-moment update of the subclass;  x <- x + lr * m / (sqrt(v) + tau)
with v initialised to tau^2 as in the paper. Subclasses differ only in the v update.
"""

from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import AggregationRule, Arrays


class FedOpt(AggregationRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"server_lr": 1e-2, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3}

    def __init__(self, **options: float) -> None:
        super().__init__(**options)
        self.m: Arrays = {}
        self.v: Arrays = {}

    def second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, global_adapter: Arrays, mean_delta: Arrays) -> Arrays:
        b1, lr, tau = self.options["beta_1"], self.options["server_lr"], self.options["tau"]
        new = {}
        for k, delta in mean_delta.items():
            self.m[k] = b1 * self.m.get(k, np.zeros_like(delta)) + (1 - b1) * delta
            self.v[k] = self.second_moment(self.v.get(k, np.full_like(delta, tau**2)), delta)
            new[k] = global_adapter[k] + lr * self.m[k] / (np.sqrt(self.v[k]) + tau)
        return new

    def state_dict(self) -> dict[str, Any]:
        return {**{f"m/{k}": v for k, v in self.m.items()}, **{f"v/{k}": v for k, v in self.v.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.m = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(v) for k, v in state.items() if k.startswith("v/")}
