"""Base for robust rules that must see every update at once (median, Krum, ...).

They keep the round's deltas in memory, so secure aggregation, which reveals only
a sum, cannot feed them (``needs_individual_updates``). The combination step reuses
Flower's own implementations (``flwr.server.strategy.aggregate``) on the deltas.
"""

from __future__ import annotations

import numpy as np

from .base import AggregationRule, Arrays, ClientUpdate

Results = list[tuple[list[np.ndarray], float]]


class BufferedRule(AggregationRule):
    needs_individual_updates = True

    def start_round(self, server_round: int, num_clients: int) -> None:
        super().start_round(server_round, num_clients)
        self._names: list[str] = []
        self._results: Results = []
        self._clients: list[str] = []

    def add(self, update: ClientUpdate) -> None:
        self._names = self._names or sorted(update.delta)
        self._results.append(([np.asarray(update.delta[k], np.float64) for k in self._names], update.weight))
        self._clients.append(update.client)

    @property
    def count(self) -> int:
        return len(self._results)

    def finish_round(self, global_adapter: Arrays) -> Arrays:
        combined = self.combine(list(self._results))
        return self.step(global_adapter, {k: v.astype(np.float32) for k, v in zip(self._names, combined, strict=True)})

    def combine(self, results: Results) -> list[np.ndarray]:
        """One robust delta from the round's deltas (layer lists in name order) and weights."""
        raise NotImplementedError
