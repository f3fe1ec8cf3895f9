"""Secure aggregation through the round loop and the ClientApp: the plain result, dropouts, aborts, DP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message
from inprocess_grid import InProcessGrid
from opacus.accountants import RDPAccountant
from safetensors.numpy import load_file

from stamen.server.federation import run_federation
from stamen.shared.config import RunConfig
from stamen.shared.protocol import NUM_EXAMPLES
from stamen.shared.run_folder import RunFolder
from stamen.shared.secagg_protocol import (
    MASK_STAGE,
    MASKED,
    MASKED_VECTOR,
    METRIC_NAMES,
    REVEALED,
    SECAGG,
    UNMASK_STAGE,
    StageInfo,
)
from stamen.simulations.client_app import simulated_client_app

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _run(tmp_path: Path, name: str, overrides: dict, drop: set[int] = frozenset(), rounds: int = 1,
         mods: tuple = ()) -> Path:
    """Three tiny-model clients; partitions in ``drop`` go offline when asked for their masked input."""

    def offline_at_masking(msg: Message, context: Context, call_next):
        stage = StageInfo.from_record(msg.content[SECAGG]).stage if SECAGG in msg.content.config_records else None
        if stage == MASK_STAGE and context.node_config["partition-id"] in drop:
            raise ConnectionError("device went offline")
        return call_next(msg, context)

    config = RunConfig().replace(**{
        "base-model": "tiny", "quantisation": "none", "wire-dtype": "float32", "num-server-rounds": rounds,
        "run-dir": str(tmp_path), "run-id": name, "fraction-evaluate": 0.0, **overrides,
    })
    return run_federation(InProcessGrid(simulated_client_app([*mods, offline_at_masking]), 3), config)


def _rows(run_dir: Path, kind: str) -> list[dict]:
    rows = RunFolder(run_dir).rows()
    return [r for r in rows if r["kind"] == kind]


def test_secure_fedavg_matches_plain_fedavg_and_survives_a_dropout_but_not_two(tmp_path):
    plain = load_file(_run(tmp_path, "plain", {}) / "global_adapter.safetensors")
    secure = load_file(_run(tmp_path, "secure", {"secure-aggregation": True}) / "global_adapter.safetensors")
    assert max(float(np.abs(plain[k] - secure[k]).max()) for k in plain) < 1e-6
    assert any(np.abs(v).max() > 0 for k, v in secure.items() if "lora_B" in k)  # the round did move the adapter

    one_down = _run(tmp_path, "one-down", {"secure-aggregation": True}, drop={1})
    clients = _rows(one_down, "client")
    assert sum(r["accepted"] for r in clients) == 2
    assert [r["reason"] for r in clients if not r["accepted"]] == ["dropped out of the secure round"]
    assert [r.get("dropped") for r in clients if not r["accepted"]] == [True]
    round_row = _rows(one_down, "round")[0]
    # it replied, then went away: dropped, neither rejected nor without reply
    assert (round_row["clients_accepted"], round_row["clients_dropped"], round_row["clients_rejected"],
            round_row["clients_without_reply"]) == (2, 1, 0, 0)
    assert all(r["bytes_up"] > 4 * 3584 for r in clients if r["accepted"])  # masked vector + keys + shares

    two_down = _run(tmp_path, "two-down", {"secure-aggregation": True}, drop={0, 1})
    assert _rows(two_down, "round")[0]["clients_accepted"] == 0
    unchanged = load_file(two_down / "global_adapter.safetensors")
    assert all(np.abs(v).max() == 0 for k, v in unchanged.items() if "lora_B" in k)  # LoRA B starts at zero


def test_the_server_learns_the_rounds_metric_means_and_not_one_clients_metric_value(tmp_path):
    """Train and evaluation metrics are summed inside the masked vectors: what leaves a device names its
    metrics but carries none of their values, and the round's means equal plain FedAvg's (weights in
    proportion to example counts: secagg-min-weight 1)."""
    sent: list = []

    def wire(msg: Message, context: Context, call_next):  # outside the secure mod: what leaves the device
        reply = call_next(msg, context)
        sent.append(reply.content)
        return reply

    overrides = {"fraction-evaluate": 1.0, "secagg-min-weight": 1.0}
    plain = _rows(_run(tmp_path, "plain", overrides), "round")[0]
    sent.clear()
    secure_run = _run(tmp_path, "secure", {**overrides, "secure-aggregation": True}, mods=(wire,))
    secure = _rows(secure_run, "round")[0]
    for key in ("train_train_loss", "train_train_steps", "train_train_tokens", "eval_heldout_loss",
                "eval_general_text_loss", "eval_personal_gain", "eval_forgetting"):
        assert secure[key] == pytest.approx(plain[key], rel=1e-3, abs=1e-5), key
    assert secure["clients_evaluated"] == 3 and "initial_heldout_loss" in secure
    assert len(sent) == 2 * 4 * 3  # train and evaluate: four stages, three clients
    for content in sent:
        assert all(dict(record) == {NUM_EXAMPLES: 1} for record in content.metric_records.values())
        assert set(content.array_records) <= {MASKED}
    named = [set(content[METRIC_NAMES]["names"]) for content in sent if METRIC_NAMES in content]
    assert len(named) == 6 and {"train-loss", "heldout-loss"} <= set.union(*named)
    for row in _rows(secure_run, "client"):
        assert row["accepted"] and not {"train_loss", "heldout_loss", "num_examples"} & set(row)


@pytest.mark.parametrize("mode", ["distributed", "central"])
def test_privacy_budget_grows_each_round_as_the_accountant_predicts(tmp_path, mode):
    overrides = {"dp": mode, "dp-noise-multiplier": 2.0, "dp-clip": 0.05, "secure-aggregation": mode == "distributed"}
    rounds = _rows(_run(tmp_path, mode, overrides, rounds=2), "round")
    expected = RDPAccountant()
    for row in rounds:
        expected.step(noise_multiplier=2.0, sample_rate=1.0)
        assert row["dp_epsilon"] == pytest.approx(expected.get_epsilon(1e-5))
    assert rounds[0]["dp_epsilon"] < rounds[1]["dp_epsilon"]


def _hostile_run(tmp_path: Path, name: str, stage: str | None, tamper, overrides: dict | None = None) -> Path:
    """Three clients in a secure round; partition 0 rewrites its reply to ``stage`` (None: the train reply)
    with ``tamper(content, context)``, as a client controlling every byte it sends would."""

    def hostile(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        stage_now = StageInfo.from_record(msg.content[SECAGG]).stage if SECAGG in msg.content.config_records else None
        if context.node_config["partition-id"] == 0 and stage_now == stage and not reply.has_error():
            tamper(reply.content, context)
        return reply

    config = RunConfig().replace(**{
        "base-model": "tiny", "quantisation": "none", "wire-dtype": "float32", "num-server-rounds": 1,
        "run-dir": str(tmp_path), "run-id": name, "fraction-evaluate": 0.0, "secure-aggregation": True,
        **(overrides or {}),
    })
    return run_federation(InProcessGrid(simulated_client_app([hostile]), 3), config)


def _garbage_masked_payload(content, context):
    array = content[MASKED][MASKED_VECTOR]
    content[MASKED] = ArrayRecord({MASKED_VECTOR: Array(dtype=array.dtype, shape=array.shape, stype=array.stype,
                                                        data=b"\x93NUMPY garbage" * 10)})


def _malformed_shares(content, context):
    content[REVEALED] = ConfigRecord({key: b"\x01" * 9 for key in content[REVEALED]})  # ShamirError on decoding


def test_a_garbage_masked_payload_drops_that_client_and_the_others_are_summed(tmp_path):
    offline_run = _run(tmp_path, "offline", {"secure-aggregation": True}, drop={0})
    offline = load_file(offline_run / "global_adapter.safetensors")
    garbage = _hostile_run(tmp_path, "garbage", MASK_STAGE, _garbage_masked_payload)
    assert _rows(garbage, "round")[0]["clients_accepted"] == 2
    result = load_file(garbage / "global_adapter.safetensors")
    assert max(float(np.abs(offline[k] - result[k]).max()) for k in offline) < 1e-6


def test_malformed_revealed_shares_are_ignored_and_the_sum_is_rebuilt_from_the_others(tmp_path):
    honest = load_file(_run(tmp_path, "honest", {"secure-aggregation": True}) / "global_adapter.safetensors")
    malformed = _hostile_run(tmp_path, "malformed", UNMASK_STAGE, _malformed_shares)
    assert _rows(malformed, "round")[0]["clients_accepted"] == 3
    result = load_file(malformed / "global_adapter.safetensors")
    assert max(float(np.abs(honest[k] - result[k]).max()) for k in honest) < 1e-6


def test_a_crafted_weight_coordinate_gets_the_secure_sum_refused_not_applied(tmp_path):
    """A client that keeps its masked update on the device rewrites its weight to -0.40: the total weight of the
    three clients (89, 189 and 297 examples: 0.575) drops to 0.086, which would inflate the mean 5.6-fold; it is
    below the 3 x 0.05 that three clients at secagg-min-weight send, so the sum is refused."""

    def negative_weight(content, context):
        vector = context.state["secagg-input"]["vector"].numpy().copy()
        vector[-1] = -0.40
        context.state["secagg-input"] = ArrayRecord({"vector": Array(vector)})

    crafted = _hostile_run(tmp_path, "crafted", None, negative_weight)
    round_row = _rows(crafted, "round")[0]
    assert round_row["clients_accepted"] == 0
    assert "crafted its weight coordinate" in round_row["aggregate_refused"]
    unchanged = load_file(crafted / "global_adapter.safetensors")
    assert all(np.abs(v).max() == 0 for k, v in unchanged.items() if "lora_B" in k)



def test_a_secure_round_whose_clients_report_no_metric_sums_their_updates(tmp_path):
    """A train handler may report its example count alone (the benchmarks' synthetic one does): the round sums
    the updates with no metric slots (it crashed the server counting an empty list of names)."""
    from flwr.app import MetricRecord

    from stamen.client.handlers import client_app_with
    from stamen.simulations.client_app import SIMULATED_CLIENT

    def count_only(msg: Message, context: Context) -> Message:
        reply = SIMULATED_CLIENT.train(msg, context)
        reply.content["metrics"] = MetricRecord({NUM_EXAMPLES: reply.content["metrics"][NUM_EXAMPLES]})
        return reply

    config = RunConfig().replace(**{
        "base-model": "tiny", "quantisation": "none", "wire-dtype": "float32", "num-server-rounds": 1,
        "run-dir": str(tmp_path), "run-id": "count-only", "fraction-evaluate": 0.0, "secure-aggregation": True})
    run_dir = run_federation(InProcessGrid(client_app_with([], count_only, SIMULATED_CLIENT), 3), config)
    (row,) = _rows(run_dir, "round")
    assert row["clients_accepted"] == 3 and not any(key.startswith("train_") for key in row)
