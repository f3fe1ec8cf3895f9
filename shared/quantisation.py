"""How the frozen base is held in memory: bitsandbytes nf4 / int8, or unquantised.

``auto`` does not pick by habit: it measures the perplexity of each mode on a
fixed calibration text and takes the most compact mode whose perplexity stays
within ``AUTO_TOLERANCE`` of the unquantised base. The verdict is cached per base
and device kind, so it is measured once.
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_write_text
from .cache import cache_dir
from .fingerprint import short

AUTO_TOLERANCE = 0.10  # relative perplexity increase accepted for a more compact mode
COMPACT_FIRST = ("nf4", "int8")
CALIBRATION_TEXT = (
    "The capital of France is Paris. It is known for its museums, its cafes and the Eiffel Tower. "
    "Water boils at one hundred degrees Celsius at sea level. Many people enjoy reading books, "
    "listening to music and walking in the park on a sunny afternoon."
)


@dataclass(frozen=True)
class QuantisationChoice:
    """The mode a base is loaded in, and why."""

    mode: str
    reason: str


def compute_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU (bf16 compute made nf4 steps ~9x slower there), bf16/fp16 on GPUs."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def bitsandbytes_unsupported_reason(device: torch.device) -> str | None:
    """None when bitsandbytes can quantise on ``device``, else why not."""
    if device.type not in ("cpu", "cuda"):
        return f"bitsandbytes has no backend for device '{device.type}'"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:  # a broken native library raises more than ImportError
        return f"bitsandbytes is not usable here ({error})"
    return None


def load_causal_lm(folder: Path, mode: str, device: torch.device, trainable: bool = True):
    """Load the base in ``folder`` with quantisation ``mode`` (``nf4``, ``int8`` or ``none``).

    ``trainable`` (the default) keeps every layer differentiable, so adapters train whatever ran
    before (see :func:`keep_4bit_layers_differentiable`); pass False only for a model that never trains.
    """
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = compute_dtype(device)
    if mode == "none":
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)
    elif mode in COMPACT_FIRST:
        reason = bitsandbytes_unsupported_reason(device)
        if reason:
            raise RuntimeError(f"quantisation '{mode}' is not available: {reason}")
        if mode == "nf4":
            bnb = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=dtype,
            )
        else:
            bnb = BitsAndBytesConfig(load_in_8bit=True)
        model = AutoModelForCausalLM.from_pretrained(
            folder, quantization_config=bnb, device_map={"": str(device)}, dtype=dtype
        )
    else:
        raise ValueError(f"unknown quantisation mode '{mode}'")
    model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    if trainable:
        keep_4bit_layers_differentiable(model)
    return model


def keep_4bit_layers_differentiable(model: torch.nn.Module) -> None:
    """Stop bitsandbytes from repacking 4-bit weights for its CPU inference kernel.

    On a CPU with AVX512-BF16, bitsandbytes (0.50) repacks a ``Linear4bit`` weight for good the
    first time the layer runs in eval mode without gradients, and from then on every forward,
    training included, goes through ``gemv_4bit``, which has no autograd: the graph is cut at
    every 4-bit layer and an adapter trained after any evaluation receives no gradient.
    docs/nf4-on-cpu.md has the details and a reproduction.
    """
    for _, layer in _linear_4bit_layers(model):
        layer.support_avx512bf16_for_cpu = False


def packed_4bit_layers(model: torch.nn.Module) -> list[str]:
    """Names of the 4-bit layers whose weights bitsandbytes repacked for CPU inference (they cannot train)."""
    return [name for name, layer in _linear_4bit_layers(model)
            if getattr(layer.weight.quant_state, "packing_format_for_cpu", False)]


def _linear_4bit_layers(model: torch.nn.Module):
    """bitsandbytes' ``Linear4bit`` modules of ``model`` (the ones that carry the repacking switch)."""
    return [(name, module) for name, module in model.named_modules() if hasattr(module, "support_avx512bf16_for_cpu")]


@torch.no_grad()
def calibration_perplexity(model, tokenizer) -> float:
    """Perplexity of ``model`` on the fixed calibration text."""
    device = next(model.parameters()).device
    ids = tokenizer(CALIBRATION_TEXT, return_tensors="pt").input_ids.to(device)
    return math.exp(model(input_ids=ids, labels=ids).loss.float().item())


def most_compact_within_tolerance(perplexity: dict[str, float]) -> str:
    """The first of ``COMPACT_FIRST`` whose perplexity is within ``AUTO_TOLERANCE`` of ``none``'s, else ``none``."""
    limit = perplexity["none"] * (1 + AUTO_TOLERANCE)
    return next((mode for mode in COMPACT_FIRST if perplexity[mode] <= limit), "none")


def choose_quantisation(folder: Path, fingerprint: str, tokenizer, device: torch.device) -> QuantisationChoice:
    """Pick the most compact mode that keeps quality, measured on this base and device."""
    unsupported = bitsandbytes_unsupported_reason(device)
    if unsupported:
        return QuantisationChoice("none", f"auto chose none: {unsupported}")
    verdict_file = cache_dir("quality") / f"{short(fingerprint)}-{device.type}.json"
    if verdict_file.is_file():
        cached = json.loads(verdict_file.read_text())
        return QuantisationChoice(cached["mode"], cached["reason"] + " (cached)")

    perplexity = {}
    for mode in ("none", *COMPACT_FIRST):
        model = load_causal_lm(folder, mode, device)
        perplexity[mode] = calibration_perplexity(model, tokenizer)
        del model
        gc.collect()
    chosen = most_compact_within_tolerance(perplexity)
    measured = ", ".join(
        f"{m} {p:.2f} ({(p / perplexity['none'] - 1) * 100:+.1f}%)" for m, p in perplexity.items() if m != "none"
    )
    reason = (
        f"auto chose {chosen} on {device.type}: calibration perplexity none {perplexity['none']:.2f}, {measured}; "
        f"the most compact mode within +{AUTO_TOLERANCE:.0%} wins"
    )
    atomic_write_text(verdict_file, json.dumps({"mode": chosen, "reason": reason, "perplexity": perplexity}))
    return QuantisationChoice(chosen, reason)
