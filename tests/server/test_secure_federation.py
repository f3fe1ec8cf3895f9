"""Secure aggregation through the round loop and the ClientApp: the plain result, dropouts, aborts, DP."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from inprocess_grid import InProcessGrid
from opacus.accountants import RDPAccountant
from safetensors.numpy import load_file

from stamen.server.federation import run_federation
from stamen.shared.config import RunConfig
from stamen.shared.run_folder import RunFolder
from stamen.shared.secagg_protocol import MASK_STAGE, SECAGG, StageInfo
from stamen.simulations.client_app import simulated_client_app

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _run(tmp_path: Path, name: str, overrides: dict, drop: set[int] = frozenset(), rounds: int = 1) -> Path:
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
    return run_federation(InProcessGrid(simulated_client_app([offline_at_masking]), 3), config)


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
    assert _rows(one_down, "round")[0]["clients_accepted"] == 2
    assert all(r["bytes_up"] > 4 * 3584 for r in clients if r["accepted"])  # masked vector + keys + shares

    two_down = _run(tmp_path, "two-down", {"secure-aggregation": True}, drop={0, 1})
    assert _rows(two_down, "round")[0]["clients_accepted"] == 0
    unchanged = load_file(two_down / "global_adapter.safetensors")
    assert all(np.abs(v).max() == 0 for k, v in unchanged.items() if "lora_B" in k)  # LoRA B starts at zero


@pytest.mark.parametrize("mode", ["distributed", "central"])
def test_privacy_budget_grows_each_round_as_the_accountant_predicts(tmp_path, mode):
    overrides = {"dp": mode, "dp-noise-multiplier": 2.0, "dp-clip": 0.05, "secure-aggregation": mode == "distributed"}
    rounds = _rows(_run(tmp_path, mode, overrides, rounds=2), "round")
    expected = RDPAccountant()
    for row in rounds:
        expected.step(noise_multiplier=2.0, sample_rate=1.0)
        assert row["dp_epsilon"] == pytest.approx(expected.get_epsilon(1e-5))
    assert rounds[0]["dp_epsilon"] < rounds[1]["dp_epsilon"]
