"""Turn a run's global adapter into a plain PEFT folder (``PeftModel.from_pretrained(base, folder)``) or a GGUF
adapter file for llama.cpp (``shared/gguf_adapter.py``).

PEFT writes the folder itself (``save_pretrained``), so any PEFT user can load it.
Exact-LoRA corrections C are folded in: for each layer, s*B*A + C is truncated back
to the adapter's rank by an SVD, the best rank-r approximation in Frobenius norm.
Under ``fedsa`` the global adapter holds A only; B (personal) stays zero in the export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from stamen.shared.adapters import adapter_parameters, attach_adapter, load_adapter_state
from stamen.shared.base_model import load_base
from stamen.shared.gguf_adapter import GGUFExportError, write_lora_gguf
from stamen.shared.interpolation import interpolate_adapter, trained_deltas
from stamen.shared.lora_layers import lora_layers
from stamen.shared.lora_modes.base import B
from stamen.shared.run_folder import RunFolder

from .checkpoint import last_round, load_round

EXPORT_FORMATS = ("peft", "gguf")
GGUF_FILE = "adapter.gguf"


def export_adapter(
    run_dir: Path, out: Path, server_round: int | None = None, format: str = "peft", alpha: float = 1.0
) -> Path:
    """Write the global adapter after ``server_round`` (default: the last) under ``out``: a PEFT folder, or
    (``gguf``) ``out/adapter.gguf`` for llama.cpp beside the base's GGUF; with ``alpha`` < 1, base + alpha x the
    adapter (``shared/interpolation.py``). Returns what it wrote."""
    if format not in EXPORT_FORMATS:
        raise GGUFExportError(f"unknown export format {format!r}: one of {EXPORT_FORMATS}")
    config = RunFolder(run_dir).run_config()
    if format == "gguf" and config.adapter.lora_mode().is_personal(f"layer{B}weight"):
        raise GGUFExportError(f"under {config.adapter.aggregation} the global adapter holds A only (each device "
                              "keeps its B): export a device's model with PersonalModel.export(folder, format='gguf')")
    adapter, corrections = load_round(run_dir, server_round or last_round(run_dir))
    base = load_base(config.base_model, quantisation="none", device="cpu")
    model = attach_adapter(base.model, config.adapter, config.seed)
    load_adapter_state(model, adapter, partial=True)
    if corrections:
        fold_corrections(model, corrections, config.adapter.alpha / config.adapter.rank)
    if alpha != 1.0:
        interpolate_adapter(model, alpha, trained_deltas(model))
    if format == "gguf":
        return write_lora_gguf(model, out / GGUF_FILE)
    model.peft_config["default"].base_model_name_or_path = str(base.folder)
    model.save_pretrained(out)
    return out


@torch.no_grad()
def fold_corrections(model: torch.nn.Module, corrections: dict[str, np.ndarray], scaling: float) -> None:
    """Replace each layer's (B, A) by the rank-r SVD truncation of s*B*A + C."""
    params = adapter_parameters(model)
    for layer in lora_layers(params):
        a, b = params[layer.a], params[layer.b]
        total = scaling * (b.double() @ a.double()) + torch.as_tensor(corrections[layer.module]).double()
        u, s, vh = torch.linalg.svd(total, full_matrices=False)
        rank = a.shape[0]
        root = torch.sqrt(s[:rank] / scaling)
        b.copy_((u[:, :rank] * root).to(b.dtype))
        a.copy_((root[:, None] * vh[:rank]).to(a.dtype))
