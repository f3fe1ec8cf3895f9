"""LoRA adapter tensors grouped by the layer they adapt (which of them travel: :mod:`.lora_modes`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .lora_modes.base import A as _A
from .lora_modes.base import B as _B


@dataclass(frozen=True)
class LoraLayer:
    """One adapted module and the names of its A (r x in) and B (out x r) tensors."""

    module: str
    a: str
    b: str


def lora_layers(names: Iterable[str]) -> list[LoraLayer]:
    """Pair up ``...lora_A.<adapter>.weight`` with ``...lora_B.<adapter>.weight``."""
    names = set(names)
    layers = []
    for a in sorted(n for n in names if _A in n):
        b = a.replace(_A, _B)
        if b not in names:
            raise KeyError(f"LoRA tensor {a} has no matching {b}")
        layers.append(LoraLayer(a.split(_A)[0], a, b))
    return layers
