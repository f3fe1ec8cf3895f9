"""Core-set selection for the replay buffer: keep the examples that cover the device's data best.

Greedy k-centre (Gonzalez 1985; Sener & Savarese 2018 for active learning): repeatedly keep the example
farthest from everything kept so far, which bounds how far any seen example lies from a kept one by twice the
best possible radius. Examples are compared by the frozen base's mean input embedding of their tokens: a
lookup, no forward pass, the same on every round because the base never changes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from stamen.shared.examples import Example

Embed = Callable[[Sequence[Example]], np.ndarray]


def k_centre(features: np.ndarray, k: int) -> list[int]:
    """Indices of ``k`` rows of ``features`` chosen greedily, each the farthest (cosine) from those before it;
    the first is the one farthest from the mean. All rows when there are no more than ``k``."""
    if len(features) <= k:
        return list(range(len(features)))
    unit = _unit_rows(features)
    centre = unit.mean(axis=0)
    chosen = [int(np.argmin(unit @ centre))]
    nearest = 1.0 - unit @ unit[chosen[0]]  # each row's distance to its nearest chosen row
    while len(chosen) < k:
        farthest = int(np.argmax(nearest))
        chosen.append(farthest)
        nearest = np.minimum(nearest, 1.0 - unit @ unit[farthest])
    return chosen


def base_embedding(model, tokenizer) -> Embed:
    """Each example's mean input embedding under the frozen base (prompt and response tokens)."""
    table = model.get_input_embeddings().weight

    @torch.no_grad()
    def embed(examples: Sequence[Example]) -> np.ndarray:
        rows = []
        for example in examples:
            ids = tokenizer(f"{example.prompt or ''}\n{example.response}", add_special_tokens=False).input_ids
            rows.append(table[torch.tensor(ids or [tokenizer.eos_token_id], device=table.device)].float().mean(0))
        return torch.stack(rows).cpu().numpy()

    return embed


def k_centre_selection(model, tokenizer) -> Callable[[list[Example], int], list[Example]]:
    """The replay buffer's ``select`` for ``replay-buffer-selection = k-centre``: the pool's k-centre core-set, in
    the order the examples came."""
    embed = base_embedding(model, tokenizer)

    def select(pool: list[Example], capacity: int) -> list[Example]:
        return [pool[i] for i in sorted(k_centre(embed(pool), capacity))]

    return select


def coverage_radius(features: np.ndarray, kept: Sequence[int]) -> float:
    """The largest cosine distance from any row to its nearest kept row: how well ``kept`` covers them."""
    unit = _unit_rows(features)
    return float((1.0 - unit @ unit[list(kept)].T).min(axis=1).max())


def _unit_rows(features: np.ndarray) -> np.ndarray:
    """Each row scaled to length 1 (cosine distance is then 1 - dot product)."""
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
