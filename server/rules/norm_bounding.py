"""Norm bounding (Sun et al. 2019): scale each delta down to at most ``bound`` in L2 norm, then average."""

import numpy as np

from .base import AggregationRule, ClientUpdate
from .registry import register


@register("norm-bounding")
class NormBounding(AggregationRule):
    needs_individual_updates = True  # the server must see each update to measure its norm

    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"bound": 1.0}

    def add(self, update: ClientUpdate) -> None:
        norm = float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in update.delta.values())))
        factor = min(1.0, self.options["bound"] / norm) if norm > 0 else 1.0
        clipped = {k: v * factor for k, v in update.delta.items()}
        super().add(ClientUpdate(update.client, clipped, update.weight, update.extras))
