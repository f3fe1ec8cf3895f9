"""Exact aggregation of LoRA products: the part of mean(B_k A_k) that mean(B) mean(A) misses.

Averaging A and B separately gives B_bar A_bar, while the clients' adapters meant
sum_k p_k B_k A_k; the difference is sum_k p_k (B_k - B_bar)(A_k - A_bar). This
accumulator folds each client's product in one update at a time and keeps the
running correction C (in weight units, scaling included) per adapted layer. C is
sent to clients beside the adapter and added to the layer's output there; it is
never merged into the (quantised) base. The accumulator is a server extension: it sees
every admitted update and keeps C in the checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from stamen.shared.lora_layers import LoraLayer
from stamen.shared.protocol import CORRECTIONS

from .extensions import RoundOutcome, ServerExtension
from .rules import ClientUpdate

_STATE = f"{CORRECTIONS}/"  # checkpoint names of C


class ExactLoraResidual(ServerExtension):
    """Running per-layer correction C, updated every round by sum p_k B_k A_k - B_bar A_bar."""

    def __init__(self, layers: list[LoraLayer], scaling: float) -> None:
        self.layers = layers
        self.scaling = scaling
        self.corrections: dict[str, np.ndarray] = {}

    def downloads(self, phase: str) -> dict[str, dict[str, np.ndarray]]:
        return {CORRECTIONS: self.corrections}  # clients add C to the layers' outputs, training and evaluating

    def start_round(self, server_round: int, global_adapter: Mapping[str, np.ndarray], replies: list) -> None:
        self._global = global_adapter
        self._products: dict[str, np.ndarray] = {}
        self._a_sum: dict[str, np.ndarray] = {}
        self._b_sum: dict[str, np.ndarray] = {}
        self._weight = 0.0

    def add(self, update: ClientUpdate) -> ClientUpdate:
        delta, weight = update.delta, update.weight
        for layer in self.layers:
            a = self._global[layer.a].astype(np.float64) + delta[layer.a]
            b = self._global[layer.b].astype(np.float64) + delta[layer.b]
            _accumulate(self._products, layer.module, weight * (b @ a))
            _accumulate(self._a_sum, layer.module, weight * a)
            _accumulate(self._b_sum, layer.module, weight * b)
        self._weight += weight
        return update

    def finish_round(self, outcome: RoundOutcome | None = None) -> dict[str, np.ndarray]:
        """Add this round's residual to C; return this round's residual."""
        residual = {}
        for layer in self.layers:
            m, w = layer.module, self._weight
            mean_product = self._products[m] / w
            separate = (self._b_sum[m] / w) @ (self._a_sum[m] / w)
            residual[m] = (self.scaling * (mean_product - separate)).astype(np.float32)
            self.corrections[m] = self.corrections.get(m, np.zeros_like(residual[m])) + residual[m]
        return residual

    def initialise(self, shapes: Mapping[str, tuple[int, int]]) -> None:
        self.corrections = {m: np.zeros(shape, np.float32) for m, shape in shapes.items()}

    def state_dict(self) -> dict[str, np.ndarray]:
        return {_STATE + module: value for module, value in self.corrections.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.corrections = {k[len(_STATE):]: v for k, v in state.items() if k.startswith(_STATE)}


def correction_shapes(layers: list[LoraLayer], adapter: Mapping[str, np.ndarray]) -> dict[str, tuple[int, int]]:
    """(out, in) of each adapted layer, read off its B (out x r) and A (r x in)."""
    return {layer.module: (adapter[layer.b].shape[0], adapter[layer.a].shape[1]) for layer in layers}


def _accumulate(sums: dict[str, np.ndarray], key: str, value: np.ndarray) -> None:
    sums[key] = sums[key] + value if key in sums else value
