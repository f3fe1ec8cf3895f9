"""Heterogeneous LoRA ranks: a client trains rank r_k <= r, the server keeps rank r.

Down: the client keeps the first r_k components of the global adapter, with the
scaling difference folded into B: B_k = B[:, :r_k] * r_k / r (so alpha/r_k * B_k A_k
= alpha/r * B[:, :r_k] A[:r_k]). Up: the client's delta is zero-padded back to rank r
with the inverse fold, so every update on the wire has the server's shapes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .lora_layers import lora_layers
from .wire import AdapterSchema


def truncate_to_rank(adapter: Mapping[str, np.ndarray], client_rank: int, rank: int) -> dict[str, np.ndarray]:
    """The rank-``client_rank`` adapter a client runs, from the server's rank-``rank`` one."""
    out = dict(adapter)
    for layer in lora_layers(adapter):
        out[layer.a] = adapter[layer.a][:client_rank]
        out[layer.b] = adapter[layer.b][:, :client_rank] * (client_rank / rank)
    return out


def pad_to_rank(delta: Mapping[str, np.ndarray], client_rank: int, rank: int) -> dict[str, np.ndarray]:
    """A client's rank-``client_rank`` delta in the server's rank-``rank`` shapes (zeros beyond r_k)."""
    out = dict(delta)
    for layer in lora_layers(delta):
        a, b = delta[layer.a], delta[layer.b]
        out[layer.a] = np.concatenate([a, np.zeros((rank - client_rank, a.shape[1]), a.dtype)], axis=0)
        padded_b = np.concatenate(
            [b * (rank / client_rank), np.zeros((b.shape[0], rank - client_rank), b.dtype)], axis=1
        )
        out[layer.b] = padded_b.astype(b.dtype)
    return out


def padded_schema(schema: AdapterSchema, rank: int) -> AdapterSchema:
    """The server-rank shapes of a client's lower-rank adapter schema."""
    shapes = dict(schema.shapes)
    for layer in lora_layers(shapes):
        shapes[layer.a] = (rank, shapes[layer.a][1])
        shapes[layer.b] = (shapes[layer.b][0], rank)
    return AdapterSchema(shapes, schema.wire_dtype)
