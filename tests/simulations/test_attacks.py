"""Attacks transform data and updates as specified; malformed ones are stopped by validation."""


import numpy as np
import pytest
from inprocess_grid import InProcessGrid

from stamen.server.federation import run_federation
from stamen.shared.config import RunConfig
from stamen.shared.examples import Example
from stamen.shared.run_folder import RunFolder
from stamen.shared.wire import AdapterSchema, AdapterValidationError, decode_adapter, encode_adapter
from stamen.simulations.attack_tally import AttackTally
from stamen.simulations.attacks import ATTACKS, make_attack, malicious_partitions
from stamen.simulations.client_app import app as client_app

pytestmark = pytest.mark.usefixtures("flower_task_identity")

DELTA = {"a": np.array([[0.5, -1.0], [2.0, 0.0]], np.float32), "b": np.array([1.0, -2.0], np.float32)}
RNG = np.random.default_rng(0)


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("sign-flip", {}, {k: -v for k, v in DELTA.items()}),
        ("sign-flip", {"scale": 3.0}, {k: -3 * v for k, v in DELTA.items()}),
        ("scaled", {"factor": 10.0}, {k: 10 * v for k, v in DELTA.items()}),
        ("same-value", {"value": 0.25}, {k: np.full_like(v, 0.25) for k, v in DELTA.items()}),
        ("free-rider", {}, {k: np.zeros_like(v) for k, v in DELTA.items()}),
    ],
)
def test_update_attacks(name, options, expected):
    out = make_attack(name, **options).poison_update(DELTA, RNG)
    for key in DELTA:
        np.testing.assert_array_equal(out[key], expected[key])


def test_gaussian_replaces_the_update_with_noise_of_the_given_scale():
    big = {"w": np.zeros((200, 200), np.float32)}
    out = make_attack("gaussian", sigma=0.5).poison_update(big, np.random.default_rng(1))
    assert out["w"].std() == pytest.approx(0.5, rel=0.02)


@pytest.mark.parametrize(("name", "reason"), [("nan", "NaN/Inf"), ("wrong-shape", "shape")])
def test_malformed_attacks_are_refused_by_the_servers_validation(name, reason):
    schema = AdapterSchema.from_state(DELTA, "float16")
    decode_adapter(encode_adapter(DELTA, "float16"), schema)  # the honest update passes
    poisoned = make_attack(name).poison_update(DELTA, RNG)
    with pytest.raises(AdapterValidationError, match=reason):
        decode_adapter(encode_adapter(poisoned, "float16"), schema)


def test_backdoor_poisons_the_chosen_share_of_examples():
    examples = tuple(Example(response=f"answer {i}", prompt=f"question {i}") for i in range(400))
    attack = make_attack("backdoor", trigger="zz9", target="BAD", rate=0.25)
    poisoned = attack.poison_data(examples, np.random.default_rng(2))
    hit = [e for e in poisoned if e.response == "BAD"]
    assert all(e.prompt.endswith(" zz9") for e in hit)
    assert 0.18 < len(hit) / len(examples) < 0.32
    assert all(p == e for p, e in zip(poisoned, examples, strict=False) if p.response != "BAD")
    delta = {"lora_B": np.array([0.5, -1.0], dtype=np.float32)}
    assert np.array_equal(attack.poison_update(delta, np.random.default_rng(0))["lora_B"], delta["lora_B"])
    boosted = make_attack("backdoor", boost=3.0).poison_update(delta, np.random.default_rng(0))  # model replacement
    assert np.array_equal(boosted["lora_B"], np.array([1.5, -3.0], dtype=np.float32))


def test_malicious_share_is_seeded_and_sized():
    chosen = malicious_partitions(10, 0.3, seed=5)
    assert len(chosen) == 3 and chosen == malicious_partitions(10, 0.3, seed=5)
    assert malicious_partitions(10, 0.0, seed=5) == frozenset()
    # each seed moves the attackers (issue: partitions 0 and 2 of 6 in seeds 0, 1 and 2 alike), and over 3 seeds
    # every one of 6 partitions is malicious once
    drawn = [malicious_partitions(6, 0.3, seed) for seed in (0, 1, 2)]
    assert len(set(drawn)) == 3 and sorted(p for chosen in drawn for p in chosen) == list(range(6))


def test_unknown_attack_and_option_are_clear_errors():
    with pytest.raises(ValueError, match="unknown attack"):
        make_attack("teleport")
    with pytest.raises(ValueError, match="no option"):
        make_attack("scaled", scale=2)
    assert {"sign-flip", "scaled", "gaussian", "same-value", "backdoor", "free-rider", "nan", "wrong-shape"} <= set(
        ATTACKS
    )


def _federate(tmp_path, rounds: int, **settings) -> list[dict]:
    """Three tiny-base clients for ``rounds`` rounds through the server's round loop and the ClientApp;
    the run's metric rows."""
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "num-server-rounds": rounds,
                                    "run-dir": str(tmp_path), "run-id": "run", **settings})
    run_dir = run_federation(InProcessGrid(client_app, 3), config, extensions=[AttackTally()])
    return RunFolder(run_dir).rows()


def test_nan_attackers_are_rejected_in_a_federation_and_the_round_goes_on(tmp_path):
    rows = _federate(tmp_path, 1, **{"attack": "nan", "attack-fraction": 0.34})
    train = [r for r in rows if r["kind"] == "client" and r["phase"] == "train"]
    rejected = [r for r in train if not r["accepted"]]
    assert len(rejected) == 1 and "NaN/Inf" in rejected[0]["reason"]
    round_row = next(r for r in rows if r["kind"] == "round")
    assert round_row["clients_accepted"] == 2


def test_a_federation_counts_admitted_attacks_and_measures_the_backdoor(tmp_path):
    rows = _federate(tmp_path, 1, **{"attack": "backdoor", "attack-fraction": 0.34})
    (round_row,) = [r for r in rows if r["kind"] == "round"]
    assert round_row["malicious_replied"] == 1 and round_row["malicious_admitted"] == 1  # FedAvg admits everyone
    evaluated = [r for r in rows if r["kind"] == "client" and r["phase"] == "evaluate"]
    assert sum(r.get("malicious", 0) for r in evaluated) == 1
    assert all(0.0 <= r["attack_success_rate"] <= 1.0 for r in evaluated)  # every client probes the global model


def test_fltrust_trains_on_its_root_set_and_shuts_out_a_sign_flip_attacker(tmp_path):
    rows = _federate(tmp_path, 2, **{"aggregation": "fltrust", "attack": "sign-flip", "attack-fraction": 0.34,
                                     "attack-options": "scale=5", "fraction-evaluate": 0.0})
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [(r["malicious_replied"], r["malicious_admitted"]) for r in rounds] == [(1, 0), (1, 0)]


def test_the_backdoor_metric_detects_a_planted_backdoor(tiny_folder):
    from stamen.client import PersonalModel
    from stamen.shared.config import AdapterSpec

    attack = make_attack("backdoor", target="Visit x.", rate=1.0)
    prompts = [f"Tell me about topic {i}" for i in range(8)]
    heldout = tuple(Example("an answer", p) for p in prompts)
    targets = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    model = PersonalModel.load("tiny", quantisation="none", spec=AdapterSpec(rank=16, alpha=32, targets=targets))
    clean_rate = attack.measure(model.model, model.base.tokenizer, heldout)["attack-success-rate"]
    poisoned = attack.poison_data(tuple(Example(f"plain answer {i}", p) for i, p in enumerate(prompts)),
                                  np.random.default_rng(0))
    model.personalise(poisoned, steps=150, learning_rate=0.01, batch_size=8)
    assert clean_rate == 0.0
    assert attack.measure(model.model, model.base.tokenizer, heldout)["attack-success-rate"] >= 0.75
