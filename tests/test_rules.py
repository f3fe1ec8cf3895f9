"""Each aggregation rule's maths on small arrays, against values worked out by hand."""

import math

import numpy as np
import pytest

from stamen.server.rules import RULES, ClientUpdate, make_rule, register
from stamen.server.rules.base import AggregationRule
from stamen.shared.protocol import CONTROL, CONTROL_DELTA

GLOBAL = {"w": np.array([1.0, -2.0], np.float32)}


def _run(rule, updates, global_adapter=GLOBAL, num_clients=None):
    rule.start_round(1, num_clients or len(updates))
    for i, (delta, weight) in enumerate(updates):
        rule.add(ClientUpdate(f"c{i}", {"w": np.asarray(delta, np.float32)}, weight))
    return rule.finish_round(global_adapter)


def test_fedavg_is_the_example_weighted_mean_delta():
    new = _run(make_rule("fedavg"), [([0.5, 0.5], 1), ([-0.5, 1.0], 3)])
    # mean = ((0.5 - 1.5) / 4, (0.5 + 3.0) / 4) = (-0.25, 0.875)
    np.testing.assert_allclose(new["w"], [0.75, -1.125])
    half = _run(make_rule("fedavg", server_lr=0.5), [([0.5, 0.5], 1), ([-0.5, 1.0], 3)])
    np.testing.assert_allclose(half["w"], [0.875, -1.5625])


def test_fedprox_aggregates_like_fedavg():
    updates = [([0.5, 0.5], 1), ([-0.5, 1.0], 3)]
    np.testing.assert_array_equal(_run(make_rule("fedprox"), updates)["w"], _run(make_rule("fedavg"), updates)["w"])


def test_fedavgm_accumulates_velocity():
    rule = make_rule("fedavgm", momentum=0.9, server_lr=1.0)
    x1 = _run(rule, [([0.2, 0.0], 1)])
    np.testing.assert_allclose(x1["w"], [1.2, -2.0])
    x2 = _run(rule, [([0.1, 0.0], 1)], global_adapter=x1)
    np.testing.assert_allclose(x2["w"], [1.2 + 0.9 * 0.2 + 0.1, -2.0])  # v = 0.28


@pytest.mark.parametrize(
    ("name", "v1"),
    [
        ("fedadam", 0.99 * 1e-6 + 0.01 * 0.04),  # b2*tau^2 + (1-b2)*d^2
        ("fedyogi", 1e-6 + 0.01 * 0.04),  # tau^2 - (1-b2)*d^2*sign(tau^2 - d^2)
        ("fedadagrad", 1e-6 + 0.04),  # tau^2 + d^2
    ],
)
def test_adaptive_optimisers_first_step(name, v1):
    rule = make_rule(name, server_lr=0.01, beta_1=0.9, beta_2=0.99, tau=1e-3)
    new = _run(rule, [([0.2, 0.0], 1)])
    m1 = 0.1 * 0.2
    expected = 1.0 + 0.01 * m1 / (math.sqrt(v1) + 1e-3)
    assert new["w"][0] == pytest.approx(expected, rel=1e-5)
    # a zero pseudo-gradient leaves the coordinate where it was
    assert new["w"][1] == pytest.approx(-2.0)


def test_optimiser_state_survives_a_checkpoint():
    first = make_rule("fedadam")
    x1 = _run(first, [([0.2, -0.1], 1)])
    restored = make_rule("fedadam")
    restored.load_state_dict(first.state_dict())
    np.testing.assert_array_equal(
        _run(first, [([0.1, 0.1], 1)], x1)["w"], _run(restored, [([0.1, 0.1], 1)], x1)["w"]
    )


def test_scaffold_updates_model_and_control_variate():
    rule = make_rule("scaffold")
    rule.initialise(GLOBAL)
    np.testing.assert_array_equal(rule.downloads()[CONTROL]["w"], [0.0, 0.0])
    rule.start_round(1, num_clients=4)
    rule.add(ClientUpdate("a", {"w": np.array([0.4, 0.0], np.float32)}, 10, {CONTROL_DELTA: {"w": np.array([1.0, 2.0], np.float32)}}))
    rule.add(ClientUpdate("b", {"w": np.array([0.0, 0.2], np.float32)}, 90, {CONTROL_DELTA: {"w": np.array([3.0, 0.0], np.float32)}}))
    new = rule.finish_round(GLOBAL)
    np.testing.assert_allclose(new["w"], [1.2, -1.9])  # uniform mean of deltas
    np.testing.assert_allclose(rule.downloads()[CONTROL]["w"], [0.5 * 2.0, 0.5 * 1.0])  # |S|/N = 2/4


def test_registry_errors_are_clear():
    with pytest.raises(ValueError, match="unknown aggregation rule 'fedmagic'"):
        make_rule("fedmagic")
    with pytest.raises(ValueError, match="no option"):
        make_rule("fedavg", momentum=0.9)
    with pytest.raises(ValueError, match="registered twice"):
        register("fedavg")(type("Again", (AggregationRule,), {}))
    assert {"fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "scaffold"} <= set(RULES)
