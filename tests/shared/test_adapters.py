import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

from stamen.shared.adapters import adapter_parameters, adapter_state, attach_adapter, load_adapter_state, shared_state
from stamen.shared.base_source import embedded_gguf_path
from stamen.shared.config import AdapterSpec, RunConfig
from stamen.shared.quantisation import load_causal_lm
from stamen.shared.wire import AdapterSchema


def _base_tensor_names(folder):
    model = load_causal_lm(folder, "none", torch.device("cpu"))
    return set(model.state_dict())


@pytest.mark.parametrize("mode", ["none", "nf4", "int8"])
def test_lora_state_is_exactly_the_adapter(tiny_folder, mode):
    model = attach_adapter(load_causal_lm(tiny_folder, mode, torch.device("cpu")), AdapterSpec(rank=4), seed=0)
    state = adapter_state(model)
    config = model.config
    # 2 layers x (q_proj, v_proj) x (A, B)
    assert len(state) == config.num_hidden_layers * 2 * 2
    assert all(".lora_A." in k or ".lora_B." in k for k in state)
    q_out = config.num_attention_heads * config.head_dim
    v_out = config.num_key_value_heads * config.head_dim
    expected = config.num_hidden_layers * 4 * (2 * config.hidden_size + q_out + v_out)
    assert sum(t.numel() for t in state.values()) == expected
    for forbidden in ("absmax", "quant_map", "quant_state", "SCB", "embed_tokens", "norm.weight"):
        assert not any(forbidden in k for k in state), forbidden
    stripped = {k.replace("base_model.model.", "", 1) for k in state}
    assert not stripped & _base_tensor_names(tiny_folder)


def test_dora_adds_magnitude_and_ia3_scales(tiny_folder):
    dora = attach_adapter(load_causal_lm(tiny_folder, "none", torch.device("cpu")), AdapterSpec(method="dora"), 0)
    assert any("lora_magnitude_vector" in k for k in adapter_state(dora))
    ia3 = attach_adapter(
        load_causal_lm(tiny_folder, "none", torch.device("cpu")),
        AdapterSpec(method="ia3", targets=("k_proj", "v_proj", "down_proj")),
        0,
    )
    state = adapter_state(ia3)
    assert state and all("ia3_l" in k for k in state)


def test_other_peft_types_go_through_the_same_path(tiny_folder):
    loha = attach_adapter(load_causal_lm(tiny_folder, "none", torch.device("cpu")), AdapterSpec(method="loha"), 0)
    state = adapter_state(loha)
    assert state and all("hada_" in k for k in state)


def test_adapter_init_depends_only_on_seed(tiny_folder):
    def init(seed):
        return adapter_state(
            attach_adapter(load_causal_lm(tiny_folder, "none", torch.device("cpu")), AdapterSpec(), seed)
        )

    a, b, c = init(3), init(3), init(4)
    name = next(k for k in a if "lora_A" in k)
    assert torch.equal(a[name], b[name])
    assert not torch.equal(a[name], c[name])


def test_load_adapter_state_round_trips_and_refuses_other_keys(tiny_folder):
    model = attach_adapter(load_causal_lm(tiny_folder, "none", torch.device("cpu")), AdapterSpec(), 0)
    new = {k: np.full(tuple(v.shape), 0.25, dtype=np.float32) for k, v in adapter_state(model).items()}
    load_adapter_state(model, new)
    assert all(torch.all(v == 0.25) for v in adapter_state(model).values())
    with pytest.raises(KeyError, match="missing"):
        load_adapter_state(model, dict(list(new.items())[1:]))


def test_unmatched_targets_are_a_clear_error(tiny_folder):
    with pytest.raises(ValueError, match=r"not found|matched no module"):
        attach_adapter(load_causal_lm(tiny_folder, "none", torch.device("cpu")), AdapterSpec(targets=("nope",)), 0)


def test_the_readme_upload_size_is_what_the_default_adapter_costs_on_the_embedded_base():
    """README: each client uploads N bytes of fp16 LoRA delta per round; the defaults on the
    embedded base's architecture (read from its GGUF, built without weights) give exactly N."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    claimed = int(re.search(r"uploads ([\d,]+) bytes of fp16 LoRA delta per round", readme).group(1).replace(",", ""))
    architecture = load_gguf_checkpoint(str(embedded_gguf_path()), return_tensors=False)["config"]
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**architecture))
    config = RunConfig()
    shared = shared_state(adapter_parameters(attach_adapter(model, config.adapter, config.seed)), config.adapter)
    assert config.wire_dtype == "float16"
    assert AdapterSchema({k: tuple(v.shape) for k, v in shared.items()}, config.wire_dtype).nbytes == claimed


def test_an_unknown_adapter_method_is_refused_naming_the_registered_ones():
    from stamen.shared.peft_methods import PEFT_METHODS, peft_method

    assert {"lora", "dora", "ia3", "adalora"} <= set(PEFT_METHODS)
    with pytest.raises(ValueError, match=r"unknown adapter method 'sparkle'; use adalora, dora, ia3, lora or a PEFT "
                                         r"type name \(.*prompt_tuning.*vera"):
        peft_method("sparkle").peft_config(AdapterSpec(method="sparkle"))
