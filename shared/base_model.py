"""Load the shared base model once, quantised as the device allows, with its fingerprint."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from .base_source import resolve_base_folder
from .fingerprint import base_fingerprint
from .quantisation import QuantisationChoice, choose_quantisation, load_causal_lm

log = logging.getLogger(__name__)


@dataclass
class LoadedBase:
    """A frozen base model ready for adapters, and where it came from."""

    model: torch.nn.Module
    tokenizer: object
    folder: Path
    fingerprint: str
    quantisation: QuantisationChoice
    device: torch.device

    @property
    def stored_bytes(self) -> int:
        """Bytes of the base's weights as stored: what full-model FedAvg would send."""
        return sum(f.stat().st_size for f in self.folder.glob("*.safetensors")) or sum(
            f.stat().st_size for f in self.folder.glob("*.bin")
        )


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given, else the first CUDA GPU, else the CPU."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")


def load_tokenizer(folder: Path):
    """The base's tokenizer, with a pad token so batches can be padded."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_base(source: str, quantisation: str = "auto", device: str | None = None, trainable: bool = True) -> LoadedBase:
    """Load a causal-LM base by alias, hub id, local folder or GGUF file.

    ``quantisation`` is ``nf4``, ``int8``, ``none`` or ``auto`` (measured choice,
    see :mod:`stamen.shared.quantisation`); the choice and its reason are logged.
    ``trainable=False`` lets bitsandbytes use its inference-only CPU kernels (a model that never trains).
    """
    target = pick_device(device)
    folder = resolve_base_folder(source)
    fingerprint = base_fingerprint(folder)
    tokenizer = load_tokenizer(folder)
    if quantisation == "auto":
        choice = choose_quantisation(folder, fingerprint, tokenizer, target)
    else:
        choice = QuantisationChoice(quantisation, f"{quantisation} requested")
    log.log(logging.INFO if choice.mode != quantisation else logging.DEBUG, "Base %s: %s", source, choice.reason)
    model = load_causal_lm(folder, choice.mode, target, trainable)
    return LoadedBase(model, tokenizer, folder, fingerprint, choice, target)
