"""Each aggregation rule's maths on small arrays, against values worked out by hand."""

import math

import numpy as np
import pytest

from stamen.server.accumulator import WeightedMean
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
    rule.add(
        ClientUpdate(
            "a", {"w": np.array([0.4, 0.0], np.float32)}, 10, {CONTROL_DELTA: {"w": np.array([1.0, 2.0], np.float32)}}
        )
    )
    rule.add(
        ClientUpdate(
            "b", {"w": np.array([0.0, 0.2], np.float32)}, 90, {CONTROL_DELTA: {"w": np.array([3.0, 0.0], np.float32)}}
        )
    )
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


def test_fedavgm_defaults_are_unit_server_lr_and_momentum_0_9():
    rule = make_rule("fedavgm")
    x1 = _run(rule, [([0.2, 0.0], 1)])
    x2 = _run(rule, [([0.1, 0.0], 1)], global_adapter=x1)
    np.testing.assert_allclose(x2["w"], [1.2 + 0.9 * 0.2 + 0.1, -2.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["fedadam", "fedyogi", "fedadagrad", "fedavgm", "scaffold"])
def test_every_stateful_rule_resumes_from_its_checkpoint_exactly(name):
    """Two rounds, a checkpoint of the server state, then the same third round from the original and the
    restored rule."""

    def updates(i):
        extras = {CONTROL_DELTA: {"w": np.array([0.3 * i, -0.1], np.float32)}} if name == "scaffold" else {}
        return [ClientUpdate("a", {"w": np.array([0.2 * i, -0.1], np.float32)}, 1.0, extras),
                ClientUpdate("b", {"w": np.array([-0.05, 0.3 * i], np.float32)}, 3.0, extras)]

    def round_of(rule, i, adapter):
        rule.start_round(i, 2)
        for update in updates(i):
            rule.add(update)
        return rule.finish_round(adapter)

    first = make_rule(name)
    first.initialise(GLOBAL)
    adapter = round_of(first, 1, GLOBAL)
    adapter = round_of(first, 2, adapter)
    state = first.state_dict()
    assert state and all("/" in key for key in state)  # something to keep, under the rule's own prefix
    restored = make_rule(name)
    restored.initialise(GLOBAL)
    restored.load_state_dict({**state, "unrelated/w": np.ones(2)})
    np.testing.assert_array_equal(round_of(first, 3, adapter)["w"], round_of(restored, 3, adapter)["w"])
    if name == "scaffold":
        np.testing.assert_array_equal(first.downloads()[CONTROL]["w"], restored.downloads()[CONTROL]["w"])


def test_scaffold_moves_the_control_by_the_sampled_share_even_with_one_client():
    rule = make_rule("scaffold")
    rule.initialise(GLOBAL)
    rule.start_round(1, num_clients=1)
    rule.add(
        ClientUpdate(
            "a", {"w": np.array([0.4, 0.0], np.float32)}, 5, {CONTROL_DELTA: {"w": np.array([1.0, 2.0], np.float32)}}
        )
    )
    np.testing.assert_allclose(rule.finish_round(GLOBAL)["w"], [1.4, -2.0])
    np.testing.assert_allclose(rule.downloads()[CONTROL]["w"], [1.0, 2.0])  # |S|/N = 1


def test_yogi_second_moment_moves_towards_the_squared_delta_from_either_side():
    rule = make_rule("fedyogi", beta_2=0.5)
    delta = np.array([2.0, 0.5, 0.9])
    v = np.array([1.0, 1.0, 0.75])  # below 4.0, above 0.25, below 0.81
    np.testing.assert_allclose(rule.second_moment(v, delta), [1.0 + 0.5 * 4.0, 1.0 - 0.5 * 0.25, 0.75 + 0.5 * 0.81])


def test_the_accumulator_folds_single_updates_and_ready_made_sums_alike():
    mean = WeightedMean()
    mean.add({"w": np.array([1.0, 2.0], np.float16)}, 2.0)
    mean.add_sum({"w": np.array([3.0, -6.0], np.float32)}, 3.0, 2)  # e.g. a secure sum of two clients
    assert (mean.count, mean.total_weight) == (3, 5.0)
    result = mean.mean()["w"]
    assert result.dtype == np.float32
    np.testing.assert_allclose(result, [(2.0 + 3.0) / 5, (4.0 - 6.0) / 5])
    fresh = WeightedMean()
    fresh.add_sum({"w": np.array([1.0, 1.0])}, 2.0, 1)
    np.testing.assert_allclose(fresh.mean()["w"], [0.5, 0.5])


def test_the_accumulator_refuses_a_weight_that_is_not_positive_and_an_empty_mean():
    mean = WeightedMean()
    with pytest.raises(ValueError, match="no update was added"):
        mean.mean()
    for weight in (0.0, -1.0):
        with pytest.raises(ValueError, match=f"update weight must be > 0, got {weight}"):
            mean.add({"w": np.ones(2)}, weight)
    mean.add({"w": np.ones(2)}, 1e-12)  # tiny but positive is an update
    assert mean.count == 1


def test_a_rule_says_why_it_cannot_serve_a_run_and_names_the_rules_that_can():
    from stamen.shared.config import ConfigError, RunConfig

    means = ", ".join(sorted(name for name, rule in RULES.items() if rule.takes_sums() and not rule.extra_uploads))
    assert "fedavg" in means and "scaffold" not in means and "median" not in means  # DP would leave its uploads bare
    central = RunConfig().replace(dp="central")
    with pytest.raises(ConfigError, match=rf"'median' needs each client's update, but differential privacy bounds each "
                                          rf"client's effect on a mean, which this rule does not compute; use a "
                                          rf"mean-based rule \({means}\)"):
        RULES["median"].check_fits(central)
    exact = RunConfig().replace(**{"lora-aggregation": "exact"})
    plain_means = " or ".join(sorted(name for name, rule in RULES.items() if rule.plain_mean))
    with pytest.raises(ConfigError, match=rf"corrects the plain mean of B\*A, so it needs aggregation "
                                          rf"{plain_means}, not fedadam"):
        RULES["fedadam"].check_fits(exact)
    RULES["fedavg"].check_fits(exact)
    lower = RunConfig().replace(**{"lora-rank": 8, "client-ranks": "4,8"})
    with pytest.raises(ConfigError, match="client-ranks cannot be combined with aggregation 'scaffold'"):
        RULES["scaffold"].check_fits(lower)
    RULES["scaffold"].check_fits(RunConfig().replace(**{"lora-rank": 8, "client-ranks": "8,8"}))  # none lower


def test_a_rule_that_needs_single_updates_refuses_a_sum_by_name():
    with pytest.raises(TypeError, match="rule 'median' needs individual updates and cannot take a sum"):
        make_rule("median").add_sum({"w": np.zeros(2)}, 1.0, 1)
    assert make_rule("fedavg").count == 0  # a new rule holds no update before its first round
