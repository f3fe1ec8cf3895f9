"""Differential privacy: clipping, the noise each mode adds, and the accountant's state."""

from __future__ import annotations

import numpy as np
import pytest
from opacus.accountants import RDPAccountant

from stamen.client.secure_aggregation import secure_input
from stamen.server.privacy import CentralPrivacy
from stamen.server.rules import RULES, ClientUpdate, make_rule
from stamen.shared.clipping import clip_l2, l2_norm
from stamen.shared.config import ConfigError, PrivacySpec, RunConfig
from stamen.shared.dp_accountant import PrivacyAccountant
from stamen.shared.noise_range import noise_value_range
from stamen.shared.secagg_protocol import SecAggError, read_sum
from stamen.simulations.secure_sum import secure_sum


def _distributed(clip: float, multiplier: float, **more) -> RunConfig:
    return RunConfig().replace(**{"secure-aggregation": True, "dp": "distributed", "dp-clip": clip,
                                  "dp-noise-multiplier": multiplier, **more})


@pytest.mark.parametrize(("clip", "multiplier", "clients"), [(0.5, 1.5, 5), (5.0, 1.0, 10)])
def test_the_decoded_secure_sum_carries_the_noise_the_accountant_records(clip, multiplier, clients):
    """Deltas at the clip bound plus every client's noise share, through the real codec and masks: the noise
    in the decoded sum has standard deviation z * C. A value range too small for the noise truncated it
    (C = 5, z = 1, n = 10 in a range of 1 measured z = 0.52), so the range is derived from the noise."""
    config = _distributed(clip, multiplier, **{"min-clients": clients})
    value_range = config.secure_value_range()
    length = 20_000
    rng = np.random.default_rng(0)
    deltas = {node: rng.normal(0, 1, length) for node in range(1, clients + 1)}
    deltas[1] = np.zeros(length)
    deltas[1][0] = 3 * clip  # one coordinate carries the whole clipped norm: the range must hold C plus noise
    vectors = {node: secure_input(delta, 10, config) for node, delta in deltas.items()}
    noisy_sum, _, weight, _ = read_sum(secure_sum(vectors, config=config).total, value_range, length)
    clipped_sum = sum(clip_l2({"d": delta}, clip)["d"] for delta in deltas.values())
    assert weight == pytest.approx(clients)  # every client weighs 1 under DP
    assert (noisy_sum - clipped_sum).std() == pytest.approx(multiplier * clip, rel=0.05)  # z * C


def test_a_value_range_that_would_truncate_the_noise_is_refused_and_zero_derives_one_that_does_not():
    with pytest.raises(ConfigError, match=r"secagg-value-range' = 1.0 would truncate distributed-DP noise.*needs >="):
        _distributed(5.0, 1.0, **{"secagg-value-range": 1.0, "min-clients": 10})
    derived = _distributed(5.0, 1.0, **{"min-clients": 10}).secure_value_range()
    assert derived == pytest.approx(noise_value_range(5.0, 1.0, 10))
    assert 5.0 + 8 * 5.0 / np.sqrt(10) < derived < 5.0 + 10 * 5.0 / np.sqrt(10)  # C plus 8-10 noise-share stds
    assert RunConfig().secure_value_range() == 1.0  # without DP: the declared delta range


def test_a_client_refuses_to_send_noise_that_encoding_would_truncate():
    """The run's range holds the noise shares of min-clients = 10 clients; a server declaring 3 would make each
    share larger than the range holds (the client sizes its share from the config and the declared count)."""
    vectors = {node: np.zeros(100) for node in (1, 2, 3)}
    with pytest.raises(SecAggError, match=r"shares the noise among 3 clients.*would be truncated"):
        secure_sum(vectors, config=_distributed(5.0, 1.0, **{"min-clients": 10}))


def test_clients_clip_their_update_before_it_is_masked():
    config = _distributed(1.0, 1.0)
    vector = secure_input(np.full(100, 3.0), 50, config)
    assert np.linalg.norm(vector[:-1]) * config.secure_value_range() == pytest.approx(1.0)
    assert vector[-1] == 1.0


def test_central_privacy_clips_each_update_and_noises_the_sum():
    privacy = PrivacySpec(dp="central", dp_clip=2.0, dp_noise_multiplier=0.05)
    central, rule = CentralPrivacy(privacy), make_rule("fedavg")
    rule.start_round(1, 4)
    for i in range(4):
        clipped = central.clip_update(ClientUpdate(f"c{i}", {"w": np.full(40_000, 10.0)}, weight=123.0))
        assert clipped.weight == 1.0 and np.linalg.norm(clipped.delta["w"]) == pytest.approx(2.0)
        rule.add(clipped)
    central.add_noise(rule, {"w": (40_000,)})
    moved = rule.finish_round({"w": np.zeros(40_000, dtype=np.float32)})["w"]
    assert moved.mean() == pytest.approx(2.0 / 200, abs=7e-4)  # each clipped update is 2/sqrt(40000) = 0.01
    assert moved.std() == pytest.approx(0.05 * 2.0 / 4, rel=0.03)  # z * C / clients


def test_accountant_state_survives_a_checkpoint_and_matches_opacus():
    accountant = PrivacyAccountant(1e-5)
    for _ in range(3):
        accountant.record_round(1.2, 0.3)
    restored = PrivacyAccountant(1e-5)
    restored.load_state_dict(accountant.state_dict())
    reference = RDPAccountant()
    for _ in range(4):
        reference.step(noise_multiplier=1.2, sample_rate=0.3)
    assert restored.record_round(1.2, 0.3) == pytest.approx(reference.get_epsilon(1e-5))


def test_dp_refuses_rules_that_do_not_average():
    with pytest.raises(ConfigError, match="differential privacy bounds"):
        RULES["median"].check_fits(_run(dp="central"))
    with pytest.raises(ConfigError, match="control-delta"):
        RULES["scaffold"].check_fits(_run(dp="central"))


def test_a_rule_names_what_each_privacy_setting_cannot_serve_each_setting_cannot_serve_and_lets_the_rest_through():
    with pytest.raises(ConfigError, match="'median' needs each client's update, but secure aggregation yields only "
                                          "the sum of updates; use a mean-based rule"):
        RULES["median"].check_fits(_run(secure_aggregation=True))
    RULES["median"].check_fits(_run())  # no privacy setting: every rule runs
    RULES["scaffold"].check_fits(_run())
    RULES["fedavg"].check_fits(_run(dp="central"))


def test_central_clipping_keeps_the_clients_name_and_extra_uploads():
    extras = {"control-delta": {"w": np.ones(3)}}
    clipped = CentralPrivacy(PrivacySpec(dp="central", dp_clip=1.0)).clip_update(
        ClientUpdate("alice", {"w": np.full(4, 2.0)}, 9.0, extras))
    assert clipped.client == "alice" and clipped.extras is extras
    np.testing.assert_allclose(clipped.delta["w"], np.full(4, 0.5))


def test_a_fresh_accountant_reports_zero_and_its_empty_state_round_trips():
    accountant = PrivacyAccountant(1e-5)
    assert accountant.epsilon() == 0.0
    state = accountant.state_dict()
    assert state["privacy/history"].shape == (0, 3)
    restored = PrivacyAccountant(1e-5)
    restored.load_state_dict(state)
    assert restored.epsilon() == 0.0
    restored.load_state_dict({})  # a checkpoint from a run without DP
    assert restored.epsilon() == 0.0


def test_a_sample_rate_above_one_is_accounted_as_one():
    over, full = PrivacyAccountant(1e-5), PrivacyAccountant(1e-5)
    assert over.record_round(1.2, 1.7) == pytest.approx(full.record_round(1.2, 1.0))


def test_secure_input_weighs_by_examples_up_to_the_cap_and_scales_into_the_value_range():
    config = RunConfig().replace(**{"secure-aggregation": True, "secagg-max-weight": 200, "secagg-min-weight": 20,
                                    "secagg-value-range": 2.0})
    delta = np.array([0.5, -1.0])
    np.testing.assert_allclose(secure_input(delta, 50, config), [0.5 * 0.25 / 2.0, -1.0 * 0.25 / 2.0, 0.25])
    np.testing.assert_allclose(secure_input(delta, 500, config), [0.5 / 2.0, -1.0 / 2.0, 1.0])
    np.testing.assert_allclose(secure_input(delta, 5, config)[-1], 0.1)  # below the floor: weighs as 20
    total, _, weight, _ = read_sum(secure_input(delta, 50, config) + secure_input(delta, 500, config), 2.0, 2)
    assert weight == pytest.approx(1.25)
    np.testing.assert_allclose(total, delta * 1.25)


def test_clipping_scales_down_only_and_keeps_float16_norms_finite():
    small = {"a": np.array([0.3, 0.4])}  # norm 0.5
    np.testing.assert_allclose(clip_l2(small, 0.1)["a"], [0.06, 0.08])
    np.testing.assert_allclose(clip_l2(small, 5.0)["a"], [0.3, 0.4])
    assert l2_norm({"a": np.full(4, 300.0, np.float16), "b": np.array([0.0])}) == pytest.approx(600.0)


@pytest.mark.parametrize("mechanism", ["rdp", "prv", "gdp"])
def test_the_accountant_is_opacus_own_chosen_by_name(mechanism):
    from opacus.accountants import create_accountant

    accountant, reference = PrivacyAccountant(1e-5, mechanism), create_accountant(mechanism)
    for _ in range(3):
        epsilon = accountant.record_round(1.1, 0.5)
        reference.step(noise_multiplier=1.1, sample_rate=0.5)
    assert epsilon == pytest.approx(float(reference.get_epsilon(1e-5)))


def test_an_unknown_accountant_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match=r"dp-accountant.*'moments'"):
        PrivacyAccountant(1e-5, "moments")


def test_the_privacy_engine_reports_the_noise_a_secure_round_really_carried():
    """One entry point: it clips (central), and accounts each release at z times the share of noise that
    arrived; a round that folded nothing in is not a release."""
    from stamen.server.extensions import RoundOutcome
    from stamen.server.privacy import PrivacyEngine

    privacy = PrivacySpec(secure_aggregation=True, dp="distributed", dp_noise_multiplier=2.0)
    engine, rule = PrivacyEngine(privacy, {"w": (3,)}), make_rule("fedavg")
    rule.start_round(1, 4)
    assert engine.round_metrics(RoundOutcome(1, rule, [], [], 0.5)) == {}
    rule.add_sum({"w": np.ones(3)}, 4.0, 4)
    metrics = engine.round_metrics(RoundOutcome(1, rule, [], [], 0.5))
    assert metrics["dp_noise_multiplier"] == 1.0
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.0, sample_rate=1.0)
    assert metrics["dp_epsilon"] == pytest.approx(reference.get_epsilon(1e-5))
    restored = PrivacyEngine(privacy, {"w": (3,)})
    restored.load_state_dict(engine.state_dict())
    assert restored.accountant.epsilon() == pytest.approx(metrics["dp_epsilon"])


def _run(**privacy) -> RunConfig:
    flat = {"secure-aggregation": privacy.get("secure_aggregation", False), "dp": privacy.get("dp", "none")}
    return RunConfig().replace(**flat)


def _messages(count: int) -> list:
    from flwr.app import Message, MessageType, RecordDict

    return [Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN) for node in range(1, count + 1)]


@pytest.mark.usefixtures("flower_task_identity")
def test_central_dp_samples_nodes_by_secret_poisson_sampling_and_accounts_at_that_rate():
    """The accountant's amplification assumes each node takes part independently and nobody can tell who:
    re-seeding Python's random (the public run seed) must not reproduce the sample."""
    import random

    from stamen.server.extensions import RoundOutcome
    from stamen.server.privacy import PrivacyEngine

    engine = PrivacyEngine(PrivacySpec(dp="central", dp_noise_multiplier=1.0), {"w": (3,)}, fraction_train=0.1)
    samples = []
    for _ in range(2):
        random.seed(0)
        samples.append([m.metadata.dst_node_id for m in engine.configure(_messages(2000), "train")])
    assert samples[0] != samples[1]
    assert all(140 < len(sample) < 260 for sample in samples)  # Binomial(2000, 0.1): mean 200, sd 13
    evaluation = _messages(50)
    assert engine.configure(evaluation, "evaluate") is evaluation  # evaluation spends no privacy
    rule = make_rule("fedavg")
    rule.start_round(1, 2000)
    metrics = engine.round_metrics(RoundOutcome(1, rule, [], []))  # an empty sample is still a release
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.0, sample_rate=0.1)
    assert metrics["dp_epsilon"] == pytest.approx(reference.get_epsilon(1e-5))
    assert metrics["dp_sample_rate"] == 0.1 and metrics["dp_sampling"].startswith("poisson")


@pytest.mark.usefixtures("flower_task_identity")
def test_distributed_dp_is_accounted_without_amplification_because_the_server_sees_whom_it_asks():
    """At q = 0.1, z = 1 over 100 rounds an amplified account reports about 8 where the server, which picked
    the clients, faces about 96."""
    from stamen.server.extensions import RoundOutcome
    from stamen.server.privacy import PrivacyEngine

    privacy = PrivacySpec(secure_aggregation=True, dp="distributed", dp_noise_multiplier=1.0)
    engine = PrivacyEngine(privacy, {"w": (3,)}, fraction_train=0.1)
    offered = _messages(30)
    assert engine.configure(offered, "train") is offered  # Flower's sample stands; it buys no amplification
    rule = make_rule("fedavg")
    rule.start_round(1, 10)
    rule.add_sum({"w": np.ones(3)}, 10.0, 10)
    for _ in range(100):
        metrics = engine.round_metrics(RoundOutcome(1, rule, [], []))
    assert metrics["dp_sample_rate"] == 1.0 and "server sees" in metrics["dp_sampling"]
    amplified = RDPAccountant()
    for _ in range(100):
        amplified.step(noise_multiplier=1.0, sample_rate=0.1)
    assert amplified.get_epsilon(1e-5) < 10 < 90 < metrics["dp_epsilon"]
