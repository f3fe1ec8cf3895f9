"""Secure aggregation of given vectors in one process: both protocol halves, no Flower transport.

For researchers trying the protocol (dropouts, thresholds, neighbourhood degree, a roster of signed
keys) and for benchmarks: the same client and server code a federation runs, driven stage by
stage, with the seconds each side spends and the bytes each client sends.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import ConfigRecord, RecordDict

from stamen.client.secagg_checks import DeviceSettings
from stamen.client.secure_aggregation import SecAggClient
from stamen.server.secure_aggregation import SecAggSettings, SecureAggregator
from stamen.shared.config import RunConfig
from stamen.shared.protocol import record_bytes
from stamen.shared.secagg_identity import DeviceIdentity, Roster

STAGES = ("share", "mask", "consistency", "unmask")
SESSION = "local/train"


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
    config: RunConfig | None = None,
    tamper: Callable[[SecureAggregator], None] | None = None,
    identities: dict[int, DeviceIdentity] | None = None,
) -> SecureSumResult:
    """Sum ``vectors`` (node id -> values in [-1, 1]) securely; nodes under a stage in ``drop_before``
    (one of :data:`STAGES`) go silent before answering it. ``config`` is the run's (its distributed DP adds
    noise; default: ``settings``' threshold and modulus, no DP); with ``identities`` (node -> its key), every
    node signs its keys and the survivor set under their roster. ``tamper`` may alter the server's routed
    shares before the mask stage, as a malicious relay would."""
    drop_before = drop_before or {}
    config = _secure_config(config or RunConfig(), settings, identities or {})
    clients = {node: SecAggClient(RecordDict(), node, DeviceSettings(identity=(identities or {}).get(node)))
               for node in vectors}
    client_seconds: dict[int, float] = defaultdict(float)
    bytes_up: dict[int, int] = defaultdict(int)

    def on_client(node: int, step: Callable[[], object]) -> object:
        started = time.perf_counter()
        answer = step()
        client_seconds[node] += time.perf_counter() - started
        bytes_up[node] += answer.nbytes if isinstance(answer, np.ndarray) else record_bytes(answer)
        return answer

    def answering(stage: str, requests: dict[int, tuple], answer: Callable[..., object]) -> dict[int, object]:
        return {node: on_client(node, lambda a=args: answer(node, *a))  # noqa: B023 (called at once)
                for node, args in requests.items() if node not in drop_before.get(stage, ())}

    keys = {node: on_client(node, lambda c=client, v=vectors[node]: c.advertise(config, SESSION, 1, v))
            for node, client in clients.items()}
    started = time.perf_counter()
    server = SecureAggregator(SESSION, 1, keys, len(next(iter(vectors.values()))), settings, random.Random(0),
                              roster=Roster(config.privacy.secagg_roster))
    server_seconds = time.perf_counter() - started
    shares = answering("share", server.share_requests(), lambda node, *a: clients[node].share_keys(*a))
    for node, ciphertexts in shares.items():
        server.add_shares(node, ciphertexts)
    if tamper:
        tamper(server)
    masked = answering("mask", server.mask_requests(), lambda node, *a: clients[node].masked_input(*a))
    started = time.perf_counter()
    for node, vector in masked.items():
        server.add_masked(node, vector)
    server_seconds += time.perf_counter() - started
    if server.roster:
        requests = {node: (info,) for node, info in server.consistency_requests().items()}
        for node, record in answering("consistency", requests,
                                      lambda node, *a: clients[node].sign_survivors(*a)).items():
            server.add_signature(node, record)
    revealed: dict[int, ConfigRecord] = answering("unmask", server.unmask_requests(),
                                                  lambda node, *a: clients[node].unmask(*a))
    started = time.perf_counter()
    total = server.finish(revealed)
    server_seconds += time.perf_counter() - started
    return SecureSumResult(total, server, client_seconds, server_seconds, bytes_up)


def _secure_config(config: RunConfig, settings: SecAggSettings, identities: dict[int, DeviceIdentity]) -> RunConfig:
    """``config`` under secure aggregation with ``settings``' threshold and modulus, the identities' roster."""
    return config.replace(**{
        "secure-aggregation": True, "secagg-threshold": settings.threshold,
        "secagg-modulus-bits": settings.modulus_bits,
        "secagg-roster": ",".join(identity.fingerprint for identity in identities.values()),
    })
