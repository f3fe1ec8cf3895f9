"""GGUF LoRA adapters for llama.cpp: named after the base GGUF's tensors, rows in the base GGUF's order, scaled as
llama.cpp scales them (alpha / rank)."""

import random

import gguf
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stamen.client.edge import PersonalModel
from stamen.client.state_store import PERSONAL, ClientStateStore
from stamen.server.checkpoint import ServerState, save_checkpoint
from stamen.server.run_record import RunRecorder
from stamen.shared.adapters import adapter_parameters, adapter_state
from stamen.shared.base_source import embedded_gguf_path
from stamen.shared.config import AdapterSpec, RunConfig
from stamen.shared.gguf_adapter import GGUFExportError, gguf_row_order
from stamen.shared.lora_layers import lora_layers
from stamen.simulations.cli import app

TARGETS = ("q_proj", "k_proj", "v_proj")


def _trained_looking(model: PersonalModel, seed: int = 0) -> None:
    """Every A and B nonzero (a fresh adapter's B is zero), as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter_parameters(model.model).values():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)


def _read(path):
    reader = gguf.GGUFReader(path)
    fields = {name: field.contents() for name, field in reader.fields.items() if not name.startswith("GGUF.")}
    return fields, {tensor.name: np.array(tensor.data) for tensor in reader.tensors}


def test_a_gguf_adapter_carries_each_layers_update_in_the_base_ggufs_names_order_and_scale(tmp_path):
    model = PersonalModel.load("tiny", quantisation="none", spec=AdapterSpec(rank=4, alpha=6.0, targets=TARGETS))
    _trained_looking(model)
    written = model.export(tmp_path / "gguf", format="gguf")
    assert written == tmp_path / "gguf" / "adapter.gguf"

    fields, tensors = _read(written)
    assert fields["general.type"] == "adapter" and fields["adapter.type"] == "lora"
    assert fields["general.architecture"] == "llama" and fields["adapter.lora.alpha"] == pytest.approx(6.0)
    config = model.model.get_base_model().config
    expected = {f"blk.{i}.attn_{kind}.weight.lora_{part}" for i in range(config.num_hidden_layers)
                for kind in ("q", "k", "v") for part in ("a", "b")}
    assert set(tensors) == expected

    params = {name: value.detach().numpy() for name, value in adapter_parameters(model.model).items()}
    for layer in lora_layers(params):
        block, kind = layer.module.split(".layers.")[1].split(".")[0], layer.module.rsplit(".", 1)[1][0]
        name = f"blk.{block}.attn_{kind}.weight"
        peft_update = (6.0 / 4) * params[layer.b] @ params[layer.a]  # what PEFT adds to the layer's weight
        llama_update = (6.0 / 4) * tensors[f"{name}.lora_b"] @ tensors[f"{name}.lora_a"]  # llama.cpp: alpha / rank
        np.testing.assert_allclose(llama_update, gguf_row_order(peft_update, name, config), rtol=1e-5, atol=1e-6)
        if kind == "v":  # only q and k rows are interleaved
            np.testing.assert_allclose(llama_update, peft_update, rtol=1e-5, atol=1e-6)
        else:
            assert not np.allclose(llama_update, peft_update, atol=1e-3)


def test_the_row_order_is_the_one_llama_cpp_wrote_the_embedded_base_in():
    """Ground truth from llama.cpp's own converter: the embedded GGUF's q and k rows against the same weights as
    transformers reads them; and every tensor an export names exists there with the shape it adapts."""
    model = PersonalModel.load("smollm2-135m", quantisation="none", spec=AdapterSpec(targets=TARGETS))
    config = model.model.get_base_model().config
    stored = {tensor.name: tensor for tensor in gguf.GGUFReader(embedded_gguf_path()).tensors}
    layer = model.model.get_base_model().model.layers[3].self_attn
    for name, module in (("blk.3.attn_q.weight", layer.q_proj), ("blk.3.attn_k.weight", layer.k_proj),
                         ("blk.3.attn_v.weight", layer.v_proj)):
        weight = module.base_layer.weight.detach().float().numpy()
        in_gguf = gguf.quants.dequantize(stored[name].data, stored[name].tensor_type).reshape(weight.shape)
        assert np.abs(gguf_row_order(weight, name, config) - in_gguf).mean() < 1e-3  # Q4_1 rounding only
        if not name.endswith("attn_v.weight"):
            assert np.abs(weight - in_gguf).mean() > 0.1  # transformers' order is not the file's

    for name, value in adapter_state(model.model).items():  # the names an export writes exist in the base
        in_features, out_features = (value.shape[1], None) if ".lora_A." in name else (None, value.shape[0])
        module = name.split(".lora_")[0].removeprefix("base_model.model.")
        block, kind = module.split(".layers.")[1].split(".")[0], module.rsplit(".", 1)[1][0]
        shape = stored[f"blk.{block}.attn_{kind}.weight"].shape  # GGUF: (in, out)
        assert in_features in (None, int(shape[0])) and out_features in (None, int(shape[1]))


def test_a_fedsa_device_exports_its_own_b_with_the_global_a(tmp_path):
    """Under fedsa the server's adapter is A only; the model a device runs is that A with the B it kept."""
    model = PersonalModel.load("tiny", quantisation="none", spec=AdapterSpec(rank=4, alpha=8.0))
    _trained_looking(model)
    global_a = {name: value.numpy() for name, value in adapter_state(model.model).items() if "lora_A" in name}
    exported = model.export(tmp_path / "global")  # stands for the federation's export
    kept_b = {name: np.full(value.shape, 0.25, dtype=np.float32)
              for name, value in adapter_state(model.model).items() if "lora_B" in name}
    ClientStateStore(tmp_path / "state").save(PERSONAL, 3, kept_b)
    device = PersonalModel.load("tiny", adapter=exported, personal_state=tmp_path / "state", quantisation="none")
    _, tensors = _read(device.export(tmp_path / "gguf", format="gguf"))
    assert all(np.all(value == 0.25) for name, value in tensors.items() if name.endswith("lora_b"))
    gguf_a = sorted(value.tobytes() for name, value in tensors.items() if name.endswith("lora_a"))
    assert gguf_a == sorted(value.tobytes() for value in global_a.values())


@pytest.mark.parametrize("method", ["dora", "ia3"])
def test_adapters_llama_cpp_cannot_load_are_refused_by_name(tmp_path, method):
    model = PersonalModel.load("tiny", quantisation="none", spec=AdapterSpec(method=method))
    with pytest.raises(GGUFExportError, match=f"LoRA adapters only, not {'DoRA' if method == 'dora' else 'IA3'}"):
        model.export(tmp_path, format="gguf")
    assert not (tmp_path / "adapter.gguf").exists()


def test_stamen_export_writes_the_global_adapter_as_gguf_and_refuses_fedsas_a_only_adapter(tmp_path):
    for mode in ("naive", "fedsa"):
        config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "run-dir": str(tmp_path),
                                        "run-id": mode, "lora-aggregation": mode})
        RunRecorder(tmp_path / mode, config, {}).finish({})
        model = PersonalModel.load("tiny", quantisation="none", spec=config.adapter, seed=config.seed)
        _trained_looking(model)
        state = {name: value.numpy() for name, value in adapter_state(model.model).items()}
        save_checkpoint(tmp_path / mode, ServerState(1, state, {}, random.getstate(), 0))

    result = CliRunner().invoke(app, ["export", str(tmp_path / "naive"), "--format", "gguf"])
    assert result.exit_code == 0, result.output
    fields, tensors = _read(tmp_path / "naive" / "export-round-1" / "adapter.gguf")
    assert fields["adapter.type"] == "lora" and len(tensors) == 2 * 2 * 2  # layers x (q, v) x (a, b)
    refused = CliRunner().invoke(app, ["export", str(tmp_path / "fedsa"), "--format", "gguf"])
    assert refused.exit_code != 0 and "holds A only" in f"{refused.exception} {refused.output}"


def test_only_architectures_whose_converter_interleaves_q_and_k_get_their_rows_permuted():
    """llama.cpp's converter interleaves a Llama's q/k rows and keeps a Gemma 3's (second base family)."""
    from types import SimpleNamespace

    rows = np.arange(4 * 8 * 2, dtype=np.float32).reshape(4 * 8, 2)
    heads = {"num_attention_heads": 4, "num_key_value_heads": 4}
    llama, gemma = SimpleNamespace(model_type="llama", **heads), SimpleNamespace(model_type="gemma3_text", **heads)
    assert not np.array_equal(gguf_row_order(rows, "blk.0.attn_q.weight", llama), rows)
    assert np.array_equal(gguf_row_order(rows, "blk.0.attn_q.weight", gemma), rows)
    assert np.array_equal(gguf_row_order(rows, "blk.0.attn_v.weight", llama), rows)
