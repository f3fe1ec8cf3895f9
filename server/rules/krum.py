"""Krum (Blanchard et al. 2017): the delta closest to its n - f - 2 nearest neighbours, via Flower."""

import numpy as np
from flwr.server.strategy.aggregate import aggregate_krum

from .buffered import BufferedRule, Results
from .registry import register


@register("krum")
class Krum(BufferedRule):
    @classmethod
    def option_defaults(cls) -> dict[str, float]:
        return {"f": 1}

    def combine(self, results: Results):
        combined = aggregate_krum(results, num_malicious=int(self.options["f"]), to_keep=0)
        self._chosen = {client for client, (arrays, _) in zip(self._clients, results, strict=True)
                        if all(np.array_equal(a, c) for a, c in zip(arrays, combined, strict=True))}
        return combined

    def chosen_clients(self) -> set[str] | None:
        return self._chosen
