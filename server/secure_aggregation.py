"""The server half of secure aggregation: neighbourhoods, share routing, and unmasking the sum.

The server only ever holds masked vectors and their modular sum. After the masked
inputs are in, it names the clients whose input arrived (under a roster, each of them
signs that set and the server shows a threshold of signatures), then collects the shares
it needs, and nothing else: self-mask seeds of clients whose input arrived, mask keys of
clients that shared keys but sent no input. It rebuilds those secrets, each checked against
what its owner committed to at stage 1, strips their masks from the sum, and decodes the
fixed-point sum.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from flwr.app import ConfigRecord

from stamen.shared import shamir
from stamen.shared.fixed_point import FixedPoint
from stamen.shared.secagg_crypto import agreed_key, mask_stream, public_bytes, seed_commitment
from stamen.shared.secagg_identity import Roster, survivors_statement, verify
from stamen.shared.secagg_protocol import (
    CONSISTENCY_STAGE,
    KEY_SHARE,
    MASK_STAGE,
    SEED_SHARE,
    SHARE_STAGE,
    SIGNATURE,
    UNMASK_STAGE,
    PeerEntry,
    SecAggError,
    StageInfo,
    pairwise_sign,
    read_sum,
    share_threshold,
)
from stamen.shared.secure_metrics import metric_means

log = logging.getLogger(__name__)
MAX_CIPHERTEXT_BYTES = 1024  # an encrypted pair of shares is under 200 bytes
MAX_SHARE_SUBSETS = 256  # subsets of revealed shares tried when some are wrong


class SecAggAborted(RuntimeError):
    """Too many clients dropped to recover the sum; the round leaves the global adapter unchanged."""


@dataclass(frozen=True)
class SecureSum:
    """What one secure exchange hands the round: who is in the sum (node -> bytes it sent), and
    the decoded sum (None when aborted): update values, weight, then the ``metric_names`` slots."""

    survivors: dict[int, int]
    total: np.ndarray | None
    metric_names: tuple[str, ...]
    value_range: float  # the update values' declared range
    tolerance: float = 0.0  # the codec's largest error on one coordinate of the sum

    def parts(self, num_values: int, num_uploads: int = 0
              ) -> tuple[np.ndarray, list[np.ndarray], float, dict[str, float]]:
        """The decoded sum read as ``num_values`` update values (and ``num_uploads`` more of them): their
        weighted sums, the total weight and the survivors' metric means."""
        assert self.total is not None, "an aborted secure sum has no parts"
        weighted_sum, extra_sums, total_weight, slots = read_sum(self.total, self.value_range, num_values,
                                                                 num_uploads)
        return weighted_sum, extra_sums, total_weight, metric_means(slots, self.metric_names, total_weight,
                                                                   self.tolerance)


@dataclass(frozen=True)
class SecAggSettings:
    degree: int = 0  # neighbours per client; 0: about 2 log2(n) (SecAgg+), complete below that
    threshold: float = 0.5  # a client's secrets need more than this fraction of its share holders
    modulus_bits: int = 32


def neighbourhoods(nodes: list[int], degree: int, rng: random.Random) -> dict[int, set[int]]:
    """A random k-regular graph (Harary graph over a shuffled ring), as in SecAgg+."""
    n = len(nodes)
    k = degree or 2 * math.ceil(math.log2(max(n, 2)))
    if k >= n - 1:
        return {node: set(nodes) - {node} for node in nodes}
    k += k % 2  # each node links k/2 ring positions either side
    ring = rng.sample(nodes, n)
    graph: dict[int, set[int]] = {node: set() for node in nodes}
    for i, node in enumerate(ring):
        for step in range(1, k // 2 + 1):
            peer = ring[(i + step) % n]
            graph[node].add(peer)
            graph[peer].add(node)
    return graph


class SecureAggregator:
    """One round's server state, from the advertised keys to the decoded sum."""

    def __init__(
        self,
        run: str,
        server_round: int,
        keys: dict[int, ConfigRecord],
        length: int,
        settings: SecAggSettings,
        rng: random.Random,
        metric_names: tuple[str, ...] = (),
        roster: Roster | None = None,
    ) -> None:
        """``length`` counts every summed value: update values, the weight, then one for each of ``metric_names``.
        Under a ``roster`` every client's keys must be signed by a distinct roster device (admission checks them)."""
        if len(keys) < 2:
            raise SecAggAborted(f"secure aggregation needs at least 2 clients, {len(keys)} advertised keys")
        self.run, self.round, self.length, self.settings = run, server_round, length, settings
        self.metric_names, self.roster = metric_names, roster or Roster(())
        nodes = sorted(keys)
        self.points = {node: i + 1 for i, node in enumerate(nodes)}
        self.keys = {node: PeerEntry.advertised(self.points[node], record) for node, record in keys.items()}
        self.graph = neighbourhoods(nodes, settings.degree, rng)
        holders = min(len(peers) for peers in self.graph.values()) + 1
        self.threshold = share_threshold(holders, settings.threshold)
        self.codec = FixedPoint(clip=1.0, num_summands=len(nodes), bits=settings.modulus_bits)
        self.shared: dict[int, ConfigRecord] = {}  # U2: node -> its encrypted shares by recipient
        self.masked: set[int] = set()  # U3
        self.signatures: dict[int, bytes] = {}  # U4 (roster): node -> its signature of U3
        self._sum = np.zeros(length, dtype=self.codec.dtype)

    def info(self, node: int, stage: str, **extra: tuple) -> StageInfo:
        return StageInfo(self.run, self.round, stage, len(self.points), self.threshold, self.points[node],
                         self.settings.modulus_bits, **extra)

    def share_requests(self) -> dict[int, tuple[StageInfo, ConfigRecord]]:
        """Stage 2: each client's neighbours with their points, public keys and (roster) signatures."""
        return {
            node: (self.info(node, SHARE_STAGE),
                   ConfigRecord({str(peer): self.keys[peer].to_bytes() for peer in sorted(peers)}))
            for node, peers in self.graph.items()
        }

    def add_shares(self, node: int, ciphertexts: ConfigRecord) -> None:
        if not isinstance(ciphertexts, ConfigRecord):
            raise SecAggError(f"node {node} sent its shares as {type(ciphertexts).__name__}, not a ConfigRecord")
        if set(ciphertexts) != {str(peer) for peer in self.graph[node]}:
            raise SecAggError(f"node {node} sent shares for {sorted(ciphertexts)[:5]}, not for its neighbours")
        if any(not isinstance(text, bytes) or len(text) > MAX_CIPHERTEXT_BYTES for text in ciphertexts.values()):
            raise SecAggError(f"node {node} sent a share that is not a ciphertext of at most "
                              f"{MAX_CIPHERTEXT_BYTES} bytes")
        self.shared[node] = ciphertexts

    def mask_requests(self) -> dict[int, tuple[StageInfo, ConfigRecord]]:
        """Stage 3: each client gets the shares its neighbours (that shared) encrypted for it."""
        return {
            node: (
                self.info(node, MASK_STAGE, metrics=self.metric_names),
                ConfigRecord(
                    {str(peer): self.shared[peer][str(node)] for peer in sorted(self.graph[node] & set(self.shared))}
                ),
            )
            for node in sorted(self.shared)
        }

    def add_masked(self, node: int, masked: np.ndarray) -> None:
        if node not in self.shared or node in self.masked:
            raise SecAggError(f"node {node} may not send a masked input now")
        if masked.dtype != self.codec.dtype or masked.shape != (self.length,):
            raise SecAggError(f"masked input of node {node} is {masked.dtype}{masked.shape}, "
                              f"expected {np.dtype(self.codec.dtype)}({self.length},)")
        self._sum += masked  # wraps modulo 2^bits
        self.masked.add(node)

    def consistency_requests(self) -> dict[int, StageInfo]:
        """Stage 4 (roster): every client whose masked input arrived is shown the whole set, to sign it."""
        survivors = tuple(sorted(self.masked))
        return {node: self.info(node, CONSISTENCY_STAGE, survivors=survivors) for node in survivors}

    def add_signature(self, node: int, record: ConfigRecord) -> None:
        if node not in self.masked or node in self.signatures:
            raise SecAggError(f"node {node} may not sign the survivor set now")
        signature = record.get(SIGNATURE) if isinstance(record, ConfigRecord) else None
        if not isinstance(signature, bytes):
            raise SecAggError(f"node {node} sent no signature of the survivor set")
        verify(self.keys[node].identity, signature, survivors_statement(self.run, self.round, sorted(self.masked)))
        self.signatures[node] = signature

    def unmask_requests(self) -> dict[int, tuple[StageInfo, ConfigRecord | None]]:
        """The last stage: each surviving client learns the survivor set (under a roster with the threshold's worth
        of signatures of it: too few signed, and the round is aborted)."""
        survivors = tuple(sorted(self.masked))
        signatures = None
        if self.roster:
            if len(self.signatures) < self.threshold:
                raise SecAggAborted(f"only {len(self.signatures)} of the {self.threshold} signatures of the survivor "
                                    f"set needed came back")
            signers = sorted(self.signatures)[:self.threshold]
            signatures = ConfigRecord({str(node): dataclasses.replace(self.keys[node], signature=self.signatures[node])
                                       .to_bytes() for node in signers})
        return {node: (self.info(node, UNMASK_STAGE, survivors=survivors), signatures) for node in survivors}

    def finish(self, revealed: dict[int, ConfigRecord]) -> np.ndarray:
        """The decoded sum of the surviving clients' vectors."""
        if not self.masked:
            raise SecAggAborted("no client sent a masked input")
        total = self._sum.copy()
        for node in sorted(self.masked):
            seed = self._rebuild(node, SEED_SHARE, revealed, self.keys[node].seed_commitment, seed_commitment)
            total -= mask_stream(seed, self.length, self.codec.dtype)
        for node in sorted(set(self.shared) - self.masked):
            survivors = self.graph[node] & self.masked
            if not survivors:
                continue
            secret = self._rebuild(node, KEY_SHARE, revealed, self.keys[node].mask_key, _public_mask_key)
            for survivor in survivors:
                pair_key = agreed_key(secret, self.keys[survivor].mask_key, self.info(node, "").mask_purpose())
                pair_mask = mask_stream(pair_key, self.length, self.codec.dtype)
                total = total - pair_mask if pairwise_sign(survivor, node) > 0 else total + pair_mask
        return self.codec.decode_sum(total)

    def _rebuild(self, node: int, kind: str, revealed: dict[int, ConfigRecord], advertised: bytes,
                 commitment: Callable[[bytes], bytes]) -> bytes:
        """Node ``node``'s secret of ``kind`` from the shares its holders revealed: the first ``threshold`` of them
        whose secret matches what the node ``advertised`` at stage 1 (its mask key's public half, its seed's
        commitment). A wrong share from a lying holder need not push the secret out of range (an error e on a
        share moves it by a Lagrange coefficient times e, a small integer for small point sets), so every
        candidate is checked, and other subsets tried."""
        shares = []
        for holder in sorted((self.graph[node] | {node}) & set(revealed)):
            data = revealed[holder].get(f"{kind}/{node}")
            try:
                share = shamir.Share.from_bytes(data) if isinstance(data, bytes) else None
            except shamir.ShamirError as reason:
                log.warning("round %d: node %s revealed a malformed share of node %s; ignored: %s", self.round,
                            holder, node, reason)
                continue
            if share is not None and share.x == self.points[holder]:
                shares.append(share)
        secret = _committed_secret(shares, self.threshold, advertised, commitment)
        if secret is None:
            raise SecAggAborted(f"only {len(shares)} of {self.threshold} needed shares of node {node}'s "
                                f"{kind} came back; the round cannot be unmasked" if len(shares) < self.threshold else
                                f"no {self.threshold} of the {len(shares)} shares of node {node}'s {kind} that came "
                                f"back rebuild the secret it committed to: a holder revealed a wrong share")
        return secret


def _committed_secret(shares: list[shamir.Share], threshold: int, advertised: bytes,
                      commitment: Callable[[bytes], bytes]) -> bytes | None:
    """The secret that ``threshold`` of ``shares`` rebuild and whose ``commitment`` is what its owner
    ``advertised``, trying up to ``MAX_SHARE_SUBSETS`` subsets; None if none does (or too few shares came back)."""
    for subset in itertools.islice(itertools.combinations(shares, threshold), MAX_SHARE_SUBSETS):
        try:
            secret = shamir.combine(list(subset), threshold)
        except shamir.ShamirError:
            continue
        if commitment(secret) == advertised:
            return secret
    return None


def _public_mask_key(secret: bytes) -> bytes:
    return public_bytes(X25519PrivateKey.from_private_bytes(secret))
