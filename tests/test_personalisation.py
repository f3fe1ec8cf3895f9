"""Personal models stay on the device: inspect every message a client sends, and the losses it reports."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message

from stamen.client.app import client_app_with
from stamen.client.personalisation import DITTO
from stamen.client.state_store import PERSONAL, ClientStateStore, client_folder
from stamen.shared.config import RunConfig
from stamen.shared.protocol import CLIENT_INFO, CLIENT_NAME
from stamen.simulations.engine import simulate


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
            np.savez(sent / f"{name}--{uuid.uuid4().hex}.npz", **arrays)
        return reply

    config = RunConfig().replace(**{
        "base-model": "tiny", "quantisation": "none", "num-server-rounds": 2, "learning-rate": 0.01,
        "lora-targets": "q_proj,v_proj,o_proj", "run-dir": str(tmp_path), "run-id": "run", **overrides,
    })
    return simulate(config, 2, client_app=client_app_with([record_replies])), sent


def _rows(run_dir: Path, kind: str, phase: str | None = None) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind and (phase is None or r.get("phase") == phase)]


@pytest.mark.parametrize("mode", ["ditto", "fedsa"])
def test_no_personal_tensor_is_ever_sent_to_the_server(tmp_path, mode):
    overrides = {"personalisation": "ditto"} if mode == "ditto" else {"lora-aggregation": "fedsa"}
    run_dir, sent = _run(tmp_path, overrides)
    clients = sorted({r["client"] for r in _rows(run_dir, "client", "train")})
    assert len(clients) == 2
    for client in clients:
        store = ClientStateStore(client_folder(run_dir / "clients", client))
        personal = store.load(DITTO if mode == "ditto" else PERSONAL, before_round=3)
        assert personal, f"{client} kept no personal state"
        uploads = [dict(np.load(path)) for path in sent.glob(f"{client}--*.npz")]
        assert len(uploads) == 4  # 2 train + 2 evaluate replies
        for upload in uploads:
            if mode == "fedsa":  # B never travels, under any record
                assert not any(".lora_B." in key for key in upload)
            for key, array in upload.items():
                name = key.split("/", 1)[1]
                if name in personal and array.shape == personal[name].shape:
                    assert not np.allclose(array.astype(np.float32), personal[name], atol=1e-3), key
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
