"""FLTrust (Cao et al. 2021): trust each update by its direction against the server's own update.

The server trains the global adapter on a small clean root set each round (its update
g0). A client's trust score is ReLU(cos(g_i, g0)); its update is rescaled to |g0|;
the new delta is the trust-weighted mean. An update pointing away from g0 gets no say.
"""

import numpy as np

from .base import Arrays
from .buffered import BufferedRule, Results
from .registry import register


@register("fltrust")
class FLTrust(BufferedRule):
    needs_root_update = True

    def set_root_update(self, root_delta: Arrays) -> None:
        self._root = root_delta

    def combine(self, results: Results):
        root = np.concatenate([np.ravel(self._root[name]) for name in self._names]).astype(np.float64)
        root_norm = np.linalg.norm(root)
        total, trust_sum, self._chosen = np.zeros_like(root), 0.0, set()
        for client, (layers, _) in zip(self._clients, results, strict=True):
            flat = np.concatenate([np.ravel(layer) for layer in layers])
            norm = np.linalg.norm(flat)
            trust = max(0.0, float(flat @ root) / (norm * root_norm)) if norm and root_norm else 0.0
            if trust > 0:
                self._chosen.add(client)
                trust_sum += trust
                total += trust * (root_norm / norm) * flat
        mean = total / trust_sum if trust_sum else total
        shapes = [layer.shape for layer in results[0][0]]
        bounds = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]
        return [part.reshape(shape) for part, shape in zip(np.split(mean, bounds), shapes, strict=True)]

    def chosen_clients(self) -> set[str] | None:
        return self._chosen

