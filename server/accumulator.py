"""A running example-weighted sum of adapter updates, one update in memory at a time."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


class WeightedMean:
    """Accumulates ``sum_k w_k * x_k`` and ``sum_k w_k`` in float64."""

    def __init__(self) -> None:
        self._sum: dict[str, np.ndarray] = {}
        self._scratch: dict[str, np.ndarray] = {}
        self.total_weight = 0.0
        self.count = 0

    def add(self, update: Mapping[str, np.ndarray], weight: float) -> None:
        if weight <= 0:
            raise ValueError(f"update weight must be > 0, got {weight}")
        for name, value in update.items():
            total = self._sum.setdefault(name, np.zeros(value.shape, np.float64))
            scratch = self._scratch.setdefault(name, np.empty(value.shape, np.float64))
            # two passes over preallocated float64 buffers: no temporary array per update
            np.multiply(value, weight, out=scratch)
            np.add(total, scratch, out=total)
        self.total_weight += weight
        self.count += 1

    def add_sum(self, weighted_sum: Mapping[str, np.ndarray], total_weight: float, count: int) -> None:
        """Fold in an already weighted sum of ``count`` updates (secure aggregation, DP noise)."""
        for name, value in weighted_sum.items():
            self._sum[name] = self._sum.get(name, 0.0) + value.astype(np.float64)
        self.total_weight += total_weight
        self.count += count

    def mean(self) -> dict[str, np.ndarray]:
        if not self.count:
            raise ValueError("no update was added")
        return {name: (total / self.total_weight).astype(np.float32) for name, total in self._sum.items()}
