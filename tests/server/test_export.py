"""`stamen export`: a plain PEFT folder that loads with PeftModel.from_pretrained and matches Stamen's model."""

import random

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
from typer.testing import CliRunner

from stamen.client.lora_corrections import LayerCorrections
from stamen.server.checkpoint import ServerState, save_checkpoint
from stamen.server.export import fold_corrections
from stamen.server.run_record import RunRecorder
from stamen.shared.adapters import adapter_state, attach_adapter, load_adapter_state
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.lora_layers import lora_layers
from stamen.simulations.cli import app

IDS = torch.tensor([[1, 7, 30, 4, 99, 12]])


def _run_folder(tmp_path, mode, corrections_share=0.0):
    """A run folder as the server leaves it after round 2, with a trained-looking adapter."""
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "run-dir": str(tmp_path),
                                    "run-id": "run", "lora-aggregation": mode})
    run_dir = tmp_path / "run"
    RunRecorder(run_dir, config, {}).finish({})
    rng = np.random.default_rng(0)
    model = attach_adapter(load_base("tiny", "none", "cpu").model, config.adapter, config.seed)
    state = {k: rng.normal(scale=0.2, size=v.shape).astype(np.float32) for k, v in adapter_state(model).items()}
    layers = lora_layers(state)
    scaling = config.adapter.alpha / config.adapter.rank
    # a correction inside the adapter's rank (a share of s*B*A), so an SVD to rank r folds it losslessly
    corrections = {
        layer.module: (corrections_share * scaling * state[layer.b] @ state[layer.a]).astype(np.float32)
        for layer in layers
    } if corrections_share else {}
    server_state = {f"corrections/{m}": c for m, c in corrections.items()}
    save_checkpoint(run_dir, ServerState(2, state, server_state, random.getstate(), 0))
    return config, run_dir, state, corrections


def _stamen_logits(config, state, corrections):
    model = attach_adapter(load_base("tiny", "none", "cpu").model, config.adapter, config.seed)
    load_adapter_state(model, state)
    if corrections:
        hooks = LayerCorrections(model, lora_layers(state), "float32")
        hooks.set(corrections)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _peft_logits(folder, base_folder):
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_folder), folder)
    with torch.no_grad():
        return model(input_ids=IDS).logits


def test_exported_adapter_loads_with_plain_peft_and_gives_the_same_logits(tmp_path, tiny_folder):
    config, run_dir, state, _ = _run_folder(tmp_path, "naive")
    result = CliRunner().invoke(app, ["export", str(run_dir), "--round", "2"])
    assert result.exit_code == 0, result.output
    folder = run_dir / "export-round-2"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    torch.testing.assert_close(
        _peft_logits(folder, tiny_folder), _stamen_logits(config, state, {}), atol=1e-5, rtol=1e-5
    )


def test_exact_corrections_are_folded_by_svd(tmp_path, tiny_folder):
    config, run_dir, state, corrections = _run_folder(tmp_path, "exact", corrections_share=0.5)
    result = CliRunner().invoke(app, ["export", str(run_dir), "--out", str(tmp_path / "folded")])
    assert result.exit_code == 0, result.output
    truth = _stamen_logits(config, state, corrections)  # Stamen's model: adapter + hooked corrections
    without = _stamen_logits(config, state, {})
    assert not torch.allclose(truth, without, atol=1e-3)
    torch.testing.assert_close(_peft_logits(tmp_path / "folded", tiny_folder), truth, atol=1e-4, rtol=1e-4)


def test_svd_folding_is_the_best_rank_r_approximation():
    rng = np.random.default_rng(3)
    b, a = rng.normal(size=(10, 2)), rng.normal(size=(2, 12))
    correction = rng.normal(scale=0.3, size=(10, 12))
    model = torch.nn.Module()  # the parameter layout PEFT gives one LoRA layer "m"
    model.m = torch.nn.Module()
    model.m.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(12, 2, bias=False)})
    model.m.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(2, 10, bias=False)})
    with torch.no_grad():
        model.m.lora_A["default"].weight.copy_(torch.tensor(a))
        model.m.lora_B["default"].weight.copy_(torch.tensor(b))
    fold_corrections(model, {"m": correction.astype(np.float32)}, scaling=2.0)
    folded = (
        2.0 * model.m.lora_B["default"].weight.detach().double() @ model.m.lora_A["default"].weight.detach().double()
    )
    target = 2.0 * b @ a + correction
    singular = np.linalg.svd(target, compute_uv=False)
    assert np.linalg.norm(folded.numpy() - target) ** 2 == pytest.approx((singular[2:] ** 2).sum(), rel=1e-4)


def test_export_with_alpha_writes_base_plus_alpha_times_the_adapter(tmp_path, tiny_folder):
    config, run_dir, state, _ = _run_folder(tmp_path, "naive")
    result = CliRunner().invoke(app, ["export", str(run_dir), "--alpha", "0.5", "--out", str(tmp_path / "wise")])
    assert result.exit_code == 0, result.output
    halved = {k: v * 0.5 if "lora_B" in k else v for k, v in state.items()}
    torch.testing.assert_close(_peft_logits(tmp_path / "wise", tiny_folder), _stamen_logits(config, halved, {}),
                               atol=1e-5, rtol=1e-5)
    refused = CliRunner().invoke(app, ["export", str(run_dir), "--alpha", "1.5"])
    assert refused.exit_code != 0 and "alpha" in refused.output.lower()
