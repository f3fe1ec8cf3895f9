"""LoRA-aware aggregation: how far each mode's global update is from the true mean of B_k A_k."""

import numpy as np
import pytest

from stamen.server.accumulator import WeightedMean
from stamen.server.lora_exact import ExactLoraResidual, correction_shapes
from stamen.server.rules import RULES, ClientUpdate
from stamen.shared.config import ConfigError, RunConfig
from stamen.shared.lora_layers import lora_layers
from stamen.shared.lora_modes import LORA_MODES

A, B = "m.lora_A.default.weight", "m.lora_B.default.weight"
SCALING = 2.0


def _clients(rng, shared_a=None, k=5, r=4, d_in=12, d_out=10):
    clients = []
    for _ in range(k):
        a = shared_a if shared_a is not None else rng.normal(size=(r, d_in))
        clients.append({A: a.astype(np.float32), B: rng.normal(size=(d_out, r)).astype(np.float32)})
    return clients, rng.uniform(1, 10, size=k)


def _true_mean_product(clients, weights):
    p = weights / weights.sum()
    return SCALING * sum(pk * (c[B].astype(np.float64) @ c[A]) for pk, c in zip(p, clients, strict=False))


def _separate_means(clients, weights):
    mean = WeightedMean()
    for c, w in zip(clients, weights, strict=False):
        mean.add(c, w)
    return mean.mean()


def _error(estimate, truth):
    return float(np.linalg.norm(estimate - truth) / np.linalg.norm(truth))


def test_naive_averaging_misses_the_cross_terms():
    clients, weights = _clients(np.random.default_rng(0))
    naive = _separate_means(clients, weights)
    assert _error(SCALING * naive[B] @ naive[A], _true_mean_product(clients, weights)) > 0.1


def test_exact_mode_recovers_the_mean_product():
    clients, weights = _clients(np.random.default_rng(1))
    global_adapter = {A: np.zeros_like(clients[0][A]), B: np.zeros_like(clients[0][B])}
    layers = lora_layers(global_adapter)
    residual = ExactLoraResidual(layers, SCALING)
    residual.initialise(correction_shapes(layers, global_adapter))
    residual.start_round(1, global_adapter, [])
    for i, (c, w) in enumerate(zip(clients, weights, strict=True)):  # deltas against a zero global: the adapters
        residual.add(ClientUpdate(f"c{i}", c, w))
    residual.finish_round()
    naive = _separate_means(clients, weights)
    estimate = SCALING * naive[B] @ naive[A] + residual.corrections["m"]
    assert _error(estimate, _true_mean_product(clients, weights)) < 1e-5


def test_ffa_is_exact_because_a_is_shared():
    rng = np.random.default_rng(2)
    clients, weights = _clients(rng, shared_a=rng.normal(size=(4, 12)))
    mean = _separate_means(clients, weights)
    assert _error(SCALING * mean[B] @ mean[A], _true_mean_product(clients, weights)) < 1e-5


def test_which_tensors_travel_per_mode():
    ffa, fedsa = LORA_MODES["ffa"], LORA_MODES["fedsa"]
    assert ffa.is_frozen(A) and not ffa.is_frozen(B) and not ffa.is_personal(B)
    assert fedsa.is_personal(B) and not fedsa.is_personal(A) and not fedsa.is_frozen(A)
    for mode in ("naive", "exact"):
        assert not any(LORA_MODES[mode].is_personal(n) or LORA_MODES[mode].is_frozen(n) for n in (A, B))


def test_exact_mode_refuses_rules_that_do_not_average():
    exact = RunConfig().replace(**{"lora-aggregation": "exact", "aggregation": "fedadam"})
    with pytest.raises(ConfigError, match="needs aggregation fedavg or fedprox, not fedadam"):
        RULES["fedadam"].check_fits(exact)
    RULES["fedprox"].check_fits(exact)
    with pytest.raises(ConfigError, match="lora or dora"):
        RunConfig().replace(**{"lora-aggregation": "ffa", "adapter": "ia3"})
