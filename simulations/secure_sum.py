"""Secure aggregation of given vectors in one process: both protocol halves, no Flower transport.

For researchers trying the protocol (dropouts, thresholds, neighbourhood degree) and
for benchmarks: the same client and server code a federation runs, driven stage by
stage, with the seconds each side spends and the bytes each client sends.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import RecordDict

from stamen.client.secure_aggregation import SecAggClient
from stamen.server.secure_aggregation import SecAggSettings, SecureAggregator

STAGES = ("share", "mask", "unmask")


@dataclass
class SecureSumResult:
    total: np.ndarray  # the decoded sum of the survivors' vectors
    server: SecureAggregator
    client_seconds: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    server_seconds: float = 0.0
    bytes_up: dict[int, int] = field(default_factory=lambda: defaultdict(int))


def secure_sum(
    vectors: dict[int, np.ndarray],
    drop_before: dict[str, set[int]] | None = None,
    settings: SecAggSettings = SecAggSettings(),
    noise_std: float = 0.0,
    tamper: Callable[[SecureAggregator], None] | None = None,
) -> SecureSumResult:
    """Sum ``vectors`` (node id -> values in [-1, 1]) securely; nodes under a stage in ``drop_before``
    ("share", "mask", "unmask") go silent before answering it. ``tamper`` may alter the server's
    routed shares before stage 3, as a malicious relay would."""
    drop_before = drop_before or {}
    clients = {node: SecAggClient(RecordDict(), node) for node in vectors}
    client_seconds: dict[int, float] = defaultdict(float)
    bytes_up: dict[int, int] = defaultdict(int)

    def on_client(node: int, step: Callable[[], object]) -> object:
        started = time.perf_counter()
        answer = step()
        client_seconds[node] += time.perf_counter() - started
        bytes_up[node] += answer.nbytes if isinstance(answer, np.ndarray) else answer.count_bytes()
        return answer

    keys = {node: on_client(node, lambda c=client, v=vectors[node]: c.advertise("local", 1, v))
            for node, client in clients.items()}
    started = time.perf_counter()
    server = SecureAggregator(
        "local", 1, keys, len(next(iter(vectors.values()))), settings, noise_std, random.Random(0)
    )
    server_seconds = time.perf_counter() - started
    for node, (info, peers) in server.share_requests().items():
        if node not in drop_before.get("share", ()):
            server.add_shares(node, on_client(node, lambda c=clients[node], i=info, p=peers: c.share_keys(i, p)))
    if tamper:
        tamper(server)
    for node, (info, shares) in server.mask_requests().items():
        if node not in drop_before.get("mask", ()):
            masked = on_client(node, lambda c=clients[node], i=info, s=shares: c.masked_input(i, s))
            started = time.perf_counter()
            server.add_masked(node, masked)
            server_seconds += time.perf_counter() - started
    revealed = {node: on_client(node, lambda c=clients[node], i=info: c.unmask(i))
                for node, info in server.unmask_requests().items() if node not in drop_before.get("unmask", ())}
    started = time.perf_counter()
    total = server.finish(revealed)
    server_seconds += time.perf_counter() - started
    return SecureSumResult(total, server, client_seconds, server_seconds, bytes_up)
