"""LoRA adapter tensors grouped by the layer they adapt, and which of them travel.

``naive`` and ``exact`` send A and B; ``ffa`` freezes A at its seeded init (so only
B is trainable and sent); ``fedsa`` sends A and keeps B on the device as the
personal part.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_A, _B = ".lora_A.", ".lora_B."


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


def is_personal(name: str, lora_aggregation: str) -> bool:
    """Whether a trainable tensor stays on the device instead of going to the server."""
    return lora_aggregation == "fedsa" and _B in name


def is_frozen(name: str, lora_aggregation: str) -> bool:
    """Whether a tensor is frozen at its seeded initial value on every party."""
    return lora_aggregation == "ffa" and _A in name
