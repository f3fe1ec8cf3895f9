"""A PEFT LoRA adapter as llama.cpp loads it: a GGUF adapter file beside the base's GGUF.

The file is what llama.cpp's own ``convert_lora_to_gguf.py`` writes: ``general.type = adapter``,
``adapter.type = lora``, ``adapter.lora.alpha``, the base's architecture, and per adapted layer
``<base tensor>.lora_a`` (rank x in) and ``<base tensor>.lora_b`` (out x rank), named after the base
GGUF's tensors by gguf's own name map. llama.cpp's converter permutes the rows of a Llama's q and k
weights (rotary halves interleaved; a Gemma 3's it keeps), so the rows of their B are permuted the same way; llama.cpp
scales by alpha / rank, so a layer whose PEFT scaling differs (rsLoRA, rank patterns) has it folded
into B.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import torch

from .adapters import active_peft_type, adapter_parameters
from .atomic import atomic_file
from .lora_layers import lora_layers
from .user_errors import UserError

# transformers model_type -> llama.cpp architecture
ARCHITECTURES = {"llama": gguf.MODEL_ARCH.LLAMA, "gemma3_text": gguf.MODEL_ARCH.GEMMA3}
ROTARY_PERMUTED = {"llama"}  # the architectures whose q and k rows llama.cpp's converter interleaves
ROTARY_ROWS = {"attn_q": "num_attention_heads", "attn_k": "num_key_value_heads"}  # GGUF tensor -> its heads


class GGUFExportError(UserError, ValueError):
    """The adapter or base is one llama.cpp cannot load as a LoRA adapter."""


def write_lora_gguf(model: torch.nn.Module, path: Path) -> Path:
    """Write ``model``'s active LoRA adapter (a PEFT model) to ``path`` for llama.cpp; returns ``path``."""
    peft_config = model.peft_config[model.active_adapter]
    kind = active_peft_type(model)
    if kind != "LORA" or getattr(peft_config, "use_dora", False):
        raise GGUFExportError(f"llama.cpp loads LoRA adapters only, not {'DoRA' if kind == 'LORA' else kind}: "
                              "export this adapter as a PEFT folder (--format peft)")
    config = model.get_base_model().config
    if config.model_type not in ARCHITECTURES:
        raise GGUFExportError(f"no GGUF export for base architecture {config.model_type!r} yet "
                              f"(supported: {sorted(ARCHITECTURES)})")
    architecture = ARCHITECTURES[config.model_type]
    names = gguf.get_tensor_name_map(architecture, config.num_hidden_layers)
    alpha = float(peft_config.lora_alpha)

    with atomic_file(path) as scratch:
        writer = gguf.GGUFWriter(str(scratch), gguf.MODEL_ARCH_NAMES[architecture])
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
        for name, tensor in _lora_tensors(model, names, alpha, config):
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def _lora_tensors(model: torch.nn.Module, names, alpha: float, config) -> list[tuple[str, np.ndarray]]:
    """``<base tensor>.lora_a`` and ``.lora_b`` of every adapted layer, as llama.cpp applies them."""
    params, tensors = adapter_parameters(model), []
    for layer in lora_layers(params):
        module_path = layer.module.removeprefix("base_model.model.")
        tensor = names.get_name(f"{module_path}.weight", try_suffixes=(".weight",))
        if tensor is None:
            raise GGUFExportError(f"{module_path} has no tensor in a {config.model_type} GGUF: llama.cpp cannot "
                                  "apply an adapter there")
        a = params[layer.a].detach().float().cpu().numpy()
        rank = a.shape[0]
        scaling = model.get_submodule(layer.module).scaling[model.active_adapter]
        b = params[layer.b].detach().float().cpu().numpy() * (scaling * rank / alpha)  # llama.cpp: alpha / rank
        tensors += [(f"{tensor}.lora_a", np.ascontiguousarray(a)),
                    (f"{tensor}.lora_b", np.ascontiguousarray(gguf_row_order(b, tensor, config)))]
    return tensors


def gguf_row_order(rows: np.ndarray, tensor: str, config) -> np.ndarray:
    """``rows`` (a weight's, or its B's) in the order the base GGUF stores them: a Llama's q and k rows are
    interleaved per head as llama.cpp's converter interleaves them; every other tensor keeps its order."""
    kind = tensor.split(".")[2] if tensor.startswith("blk.") else ""
    if kind not in ROTARY_ROWS or config.model_type not in ROTARY_PERMUTED:
        return rows
    heads = getattr(config, ROTARY_ROWS[kind])
    return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)
