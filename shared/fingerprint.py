"""The base fingerprint: which exact base model an adapter belongs to.

An adapter delta only means something on the weights it was trained against.
The fingerprint hashes the architecture config, the weight tensors' names,
shapes and dtypes, and the weights' bytes as stored (before any quantisation),
so a client running the base in nf4 and a server holding it in bf16 agree.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

# Keys that describe how a checkpoint was saved or run, not what the model is.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "torch_dtype", "dtype", "quantization_config", "use_cache"}


class BaseMismatchError(RuntimeError):
    """Two parties hold different base models."""


def base_fingerprint(folder: Path) -> str:
    """``sha256:<hex>`` over config, tensor layout and tensor bytes of the base in ``folder``."""
    hasher = hashlib.sha256()
    config = json.loads((folder / "config.json").read_text())
    normalised = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}
    hasher.update(json.dumps(normalised, sort_keys=True).encode())
    for name, tensor in _stored_tensors(folder):
        hasher.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}".encode())
        hasher.update(tensor.contiguous().view(torch.uint8).numpy().data)
    return f"sha256:{hasher.hexdigest()}"


def check_same_base(expected: str, actual: str, context: str) -> None:
    """Raise a clear error when two fingerprints differ."""
    if expected != actual:
        raise BaseMismatchError(
            f"base model mismatch ({context}): expected fingerprint {short(expected)}, got {short(actual)}; "
            "both sides must load the same base weights"
        )


def short(fingerprint: str) -> str:
    """The first 12 hex digits, enough to tell bases apart in logs."""
    return fingerprint.split(":", 1)[-1][:12]


def _stored_tensors(folder: Path):
    """Yield (name, tensor) in name order from safetensors, else from PyTorch ``.bin`` files."""
    files = sorted(folder.glob("*.safetensors"))
    if files:
        from safetensors import safe_open

        handles = [safe_open(str(f), framework="pt") for f in files]
        index = sorted((name, h) for h in handles for name in h.keys())  # noqa: SIM118 (safe_open is not iterable)
        for name, handle in index:
            yield name, handle.get_tensor(name)
        return
    bins = sorted(folder.glob("*.bin"))
    if not bins:
        raise FileNotFoundError(f"no *.safetensors or *.bin weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in bins:
        state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
    yield from sorted(state.items())
