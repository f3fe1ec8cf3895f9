"""Robust aggregation rules against results worked out by hand on small deltas."""

import numpy as np
import pytest

from stamen.server.rules import RULES, ClientUpdate, make_rule

ZERO = {"w": np.zeros(2, np.float32)}


def _aggregate(rule, deltas, weights=None):
    rule.start_round(1, len(deltas))
    for i, delta in enumerate(deltas):
        rule.add(ClientUpdate(f"c{i}", {"w": np.asarray(delta, np.float32)}, (weights or [1.0] * len(deltas))[i]))
    combined = rule.finish_round(ZERO)["w"]
    assert combined.dtype == np.float32  # the global adapter keeps its dtype
    return combined


def test_median_is_coordinate_wise():
    out = _aggregate(make_rule("median"), [[1, -1], [2, 5], [3, 0], [100, -100]])
    np.testing.assert_allclose(out, [2.5, -0.5])


def test_trimmed_mean_drops_the_extremes_per_coordinate():
    out = _aggregate(make_rule("trimmed-mean", beta=0.25), [[1, -1], [2, 5], [3, 0], [100, -100]])
    np.testing.assert_allclose(out, [2.5, -0.5])  # mean of the middle two per coordinate


def test_krum_picks_the_honest_cluster():
    honest = [[0.0, 0.0], [0.1, 0.0], [0.2, 0.1]]
    rule = make_rule("krum", f=1)
    out = _aggregate(rule, [*honest, [10.0, -10.0]])
    assert any(np.allclose(out, h) for h in honest)
    (chosen,) = rule.chosen_clients()  # the one update Krum kept, so admitted attacks can be counted
    assert chosen in {"c0", "c1", "c2"} and np.allclose(out, honest[int(chosen[1:])])


def test_multikrum_averages_the_best_scored_honest_updates():
    honest = [[0.0, 0.0], [0.1, 0.0], [0.2, 0.0]]
    out = _aggregate(make_rule("multikrum", f=1, m=2), [*honest, [10.0, -10.0], [9.0, -9.0]])
    assert 0.0 <= out[0] <= 0.2 and out[1] == pytest.approx(0.0)


def test_bulyan_resists_an_outlier_and_states_its_client_floor():
    rng = np.random.default_rng(0)
    honest = (1.0 + 0.01 * rng.normal(size=(6, 2))).tolist()
    out = _aggregate(make_rule("bulyan", f=1), [*honest, [100.0, 100.0]])
    np.testing.assert_allclose(out, [1.0, 1.0], atol=0.05)
    with pytest.raises(ValueError, match="4 \\* num_malicious \\+ 3"):
        _aggregate(make_rule("bulyan", f=1), honest[:4])


def test_norm_bounding_clips_each_update_before_the_weighted_mean():
    out = _aggregate(make_rule("norm-bounding", bound=1.0), [[3.0, 4.0], [0.3, 0.4]], weights=[1.0, 3.0])
    # [3, 4] has norm 5 -> [0.6, 0.8]; [0.3, 0.4] is inside the bound
    np.testing.assert_allclose(out, [(0.6 + 3 * 0.3) / 4, (0.8 + 3 * 0.4) / 4], rtol=1e-6)


def test_rules_declare_whether_they_need_individual_updates():
    robust = {"median", "trimmed-mean", "krum", "multikrum", "bulyan", "norm-bounding"}
    assert all(RULES[name].needs_individual_updates for name in robust)
    assert not any(RULES[name].needs_individual_updates for name in ("fedavg", "fedadam", "scaffold"))


def test_fltrust_weights_by_direction_against_the_root_update_and_drops_opposed_ones():
    rule = make_rule("fltrust")
    rule.start_round(1, 3)
    rule.set_root_update({"w": np.array([1.0, 0.0], np.float32)})
    for name, delta in (("a", [1.0, 1.0]), ("b", [3.0, 0.0]), ("evil", [-5.0, 0.5])):
        rule.add(ClientUpdate(name, {"w": np.array(delta, np.float32)}, 1.0))
    out = rule.finish_round(ZERO)["w"]
    # a: trust cos 45deg = 0.7071, rescaled to |g0| = 1 -> [0.7071, 0.7071]; b: trust 1 -> [1, 0]; evil: trust 0
    np.testing.assert_allclose(out, [(0.5 + 1.0) / 1.70711, 0.5 / 1.70711], rtol=1e-4)
    assert rule.chosen_clients() == {"a", "b"}
