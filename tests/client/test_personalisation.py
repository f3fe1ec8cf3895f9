"""Personal models stay on the device: inspect every message a client sends, and the losses it reports."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message
from inprocess_grid import InProcessGrid

from stamen.client.personalisation import DITTO
from stamen.client.state_store import PERSONAL, ClientStateStore, client_folder
from stamen.server.federation import run_federation
from stamen.shared.config import RunConfig
from stamen.shared.protocol import ARRAYS, CLIENT_INFO, CLIENT_NAME, CONFIG, SERVER_ROUND
from stamen.shared.run_folder import RunFolder
from stamen.simulations.client_app import simulated_client_app

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _run(tmp_path: Path, overrides: dict) -> tuple[Path, Path]:
    """Two tiny-model clients x 2 rounds; every array any client sends is saved under ``sent/``."""
    sent = tmp_path / "sent"
    sent.mkdir()

    def record_replies(msg: Message, context: Context, call_next):
        reply = call_next(msg, context)
        if not reply.has_error():
            name = str(reply.content[CLIENT_INFO][CLIENT_NAME]) if CLIENT_INFO in reply.content else "?"
            arrays = {f"{record}/{key}": array.numpy() for record, arrays in reply.content.array_records.items()
                      for key, array in arrays.items()}
            received = {f"{RECEIVED}/{key}": array.numpy() for key, array in msg.content[ARRAYS].items()}
            server_round = int(msg.content[CONFIG][SERVER_ROUND])
            np.savez(sent / f"{name}--{msg.metadata.message_type}--r{server_round}--{uuid.uuid4().hex}.npz",
                     **arrays, **received)
        return reply

    config = RunConfig().replace(**{
        "base-model": "tiny", "quantisation": "none", "num-server-rounds": 2, "learning-rate": 0.01,
        "lora-targets": "q_proj,v_proj,o_proj", "run-dir": str(tmp_path), "run-id": "run", **overrides,
    })
    return run_federation(InProcessGrid(simulated_client_app([record_replies]), 2), config), sent


RECEIVED = "received-by-the-client"  # the global adapter of the message a reply answers, saved beside the reply


def _rows(run_dir: Path, kind: str, phase: str | None = None) -> list[dict]:
    rows = RunFolder(run_dir).rows()
    return [r for r in rows if r["kind"] == kind and (phase is None or r.get("phase") == phase)]


@pytest.mark.parametrize("mode", ["ditto", "fedsa"])
def test_no_personal_tensor_is_ever_sent_to_the_server(tmp_path, mode):
    """Every reply of every round, in every record: neither that round's personal state nor
    personal - received (what an upload made after training the personal model would carry)."""
    overrides = {"personalisation": "ditto"} if mode == "ditto" else {"lora-aggregation": "fedsa"}
    run_dir, sent = _run(tmp_path, overrides)
    clients = sorted({r["client"] for r in _rows(run_dir, "client", "train")})
    assert len(clients) == 2
    for client in clients:
        store = ClientStateStore(client_folder(run_dir / "clients", client))
        replies = sorted(sent.glob(f"{client}--*.npz"))
        assert len(replies) == 4  # 2 train + 2 evaluate replies
        for path in replies:
            server_round = int(path.name.split("--")[2][1:])
            personal = store.load(DITTO if mode == "ditto" else PERSONAL, before_round=server_round + 1)
            assert personal, f"{client} kept no personal state in round {server_round}"
            saved = dict(np.load(path))
            received = {k.split("/", 1)[1]: v.astype(np.float32) for k, v in saved.items() if k.startswith(RECEIVED)}
            upload = {k: v.astype(np.float32) for k, v in saved.items() if not k.startswith(RECEIVED)}
            if mode == "fedsa":  # B never travels, under any record
                assert not any(".lora_B." in key for key in upload)
            for key, array in upload.items():
                name = key.split("/", 1)[1]
                if name in personal and array.shape == personal[name].shape:
                    assert not np.allclose(array, personal[name], atol=1e-3), (path.name, key)
                    if name in received and np.abs(personal[name] - received[name]).max() > 1e-3:
                        assert not np.allclose(array, personal[name] - received[name], atol=1e-4), (path.name, key)
    evaluated = _rows(run_dir, "client", "evaluate")
    assert all("personal_heldout_loss" in r for r in evaluated)
    if mode == "ditto":  # the personal adapter is a different model from the global one
        assert all(abs(r["personal_gain"]) > 1e-6 for r in evaluated)
    assert all("eval_personal_heldout_loss" in r for r in _rows(run_dir, "round"))


def test_finetune_personal_model_beats_the_global_one_on_the_clients_own_data(tmp_path):
    run_dir, _ = _run(tmp_path, {"personalisation": "finetune", "personal-steps": 8})
    evaluated = _rows(run_dir, "client", "evaluate")
    assert len(evaluated) == 4
    assert np.mean([r["personal_gain"] for r in evaluated]) > 0
    assert not (run_dir / "clients").exists() or not list((run_dir / "clients").rglob(f"{DITTO}*"))


def test_the_personalisation_preset_protects_against_forgetting_by_default_and_switches_off(tmp_path):
    """simulations/personalisation.toml: each client's Ditto model is protected by the default forgetting protection
    (shared/forgetting_protection.py: chosen on simulations/forgetting.toml, judged on forgetting-*.toml), replay
    in every training round; forgetting-protection = none turns it off."""
    from stamen.shared.forgetting_protection import DEFAULT, PROTECTIONS
    from stamen.simulations.commands import new_simulation_config

    chosen = PROTECTIONS[DEFAULT]
    preset = Path(__file__).resolve().parents[2] / "simulations" / "personalisation.toml"
    settings = ["base-model=tiny", "quantisation=none", "learning-rate=0.01", "local-steps=4", "personal-steps=4",
                "replay-self-size=4"]
    for switch, protected in (([], True), (["forgetting-protection=none"], False)):
        out = tmp_path / str(protected)
        config = new_simulation_config(preset, [*settings, *switch, f"run-dir={out}", "run-id=run"], 2, 2)
        assert config.personal.method == "ditto"
        assert (config.replay.sources, config.personal.wise_alpha) == (
            (chosen["replay"], chosen["wise-alpha"]) if protected else ("none", 1.0))
        run_federation(InProcessGrid(simulated_client_app([]), 2), config)
        trained, evaluated = _rows(out / "run", "client", "train"), _rows(out / "run", "client", "evaluate")
        assert len(evaluated) == 4 and all("personal_heldout_loss" in r for r in evaluated)
        replaying = protected and chosen["replay"] != "none"
        assert all((r.get("replay_examples", 0) > 0) == replaying for r in trained)
        assert all(("wise_alpha" in r) == (protected and chosen["wise-alpha"] != 1.0) for r in evaluated)
