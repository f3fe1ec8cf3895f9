"""The client half of secure aggregation: keys, shares, the masked update, and what it reveals.

Secrets (private keys, the self-mask seed, shares held for neighbours, the update
itself) live in the node's ``Context.state`` between messages and never leave the
device; each stage checks it is the next one for the same run and round.
"""

from __future__ import annotations

import logging
import os
import secrets

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, RecordDict

from stamen.shared import shamir
from stamen.shared.clipping import clip_l2
from stamen.shared.config import RunConfig
from stamen.shared.fixed_point import FixedPoint
from stamen.shared.secagg_crypto import (
    ShareAuthenticationError,
    agreed_key,
    decrypt,
    encrypt,
    mask_stream,
    new_private_key,
    private_bytes,
    public_bytes,
)
from stamen.shared.secagg_protocol import (
    ENCRYPTION_KEY,
    KEY_SHARE,
    MASK_KEY,
    SEED_SHARE,
    SecAggError,
    StageInfo,
    pack_shares,
    pairwise_sign,
    read_peer_entry,
    secure_weight,
    share_threshold,
    unpack_shares,
    update_vector,
)

log = logging.getLogger(__name__)


def secure_input(delta_flat: np.ndarray, num_examples: int, config: RunConfig) -> np.ndarray:
    """The vector this client sums securely: its delta (clipped to ``dp-clip`` under distributed DP)
    times its :func:`secure_weight`, over the run's value range, then the weight."""
    privacy = config.privacy
    if privacy.dp == "distributed":
        delta_flat = clip_l2({"delta": delta_flat}, privacy.dp_clip)["delta"]
    value_range = config.secure_value_range()
    outside = int(np.count_nonzero(np.abs(delta_flat) > value_range))
    if outside:
        log.warning("%d of %d update values lie outside secagg-value-range %g and are clipped to it", outside,
                    delta_flat.size, value_range)
    return update_vector(delta_flat, secure_weight(num_examples, privacy), value_range)

STATE = "secagg-client"
INPUT = "secagg-input"
_ADVERTISED, _SHARED, _MASKED = "advertised", "shared", "masked"


DEFAULT_MIN_THRESHOLD = 0.5  # node config ``secagg-min-threshold``: a majority of the share holders


class SecAggClient:
    """One node's side of one secure round, kept in ``state`` (the node's Context.state).

    The client does not take the server's word for the share threshold: it needs more than
    ``min_threshold`` of its share holders (its own setting, from the node config), refuses a
    server that asks for fewer, and reveals nothing unless that many of them survived."""

    def __init__(self, state: RecordDict, node_id: int, min_threshold: float = DEFAULT_MIN_THRESHOLD) -> None:
        if not 0.5 <= min_threshold < 1:
            raise SecAggError(f"secagg-min-threshold must be in [0.5, 1), got {min_threshold}")
        self.state = state
        self.node = node_id
        self.min_threshold = min_threshold

    def advertise(self, run: str, server_round: int, vector: np.ndarray) -> ConfigRecord:
        """Keep ``vector`` (the update to sum, encoded units) and fresh secrets; return the public keys."""
        encryption, masking = new_private_key(), new_private_key()
        self.state[STATE] = ConfigRecord({
            "run": run, "server-round": server_round, "stage": _ADVERTISED,
            "encryption-secret": private_bytes(encryption), "mask-secret": private_bytes(masking),
            "seed": os.urandom(shamir.SECRET_BYTES),
        })
        self.state[INPUT] = ArrayRecord({"vector": Array(np.ascontiguousarray(vector, dtype=np.float64))})
        return ConfigRecord({ENCRYPTION_KEY: public_bytes(encryption), MASK_KEY: public_bytes(masking)})

    def share_keys(self, info: StageInfo, peers: ConfigRecord) -> ConfigRecord:
        """Shamir-share the seed and mask key among the neighbours (and self); encrypt each pair of shares."""
        mine = self._expect(info, _ADVERTISED)
        neighbours = {int(node): read_peer_entry(bytes(entry)) for node, entry in peers.items()}
        if self.node in neighbours or not neighbours:
            raise SecAggError("the neighbour list must name other nodes, not this one")
        holders = len(neighbours) + 1
        least = share_threshold(holders, self.min_threshold)
        if not least <= info.threshold <= holders:
            raise SecAggError(f"the server asks for a share threshold of {info.threshold} among {holders} holders; "
                              f"this client needs at least {least} (secagg-min-threshold {self.min_threshold})")
        mine["threshold"] = info.threshold
        points = [info.point] + [point for point, _, _ in neighbours.values()]
        seed_shares = shamir.split(bytes(mine["seed"]), points, info.threshold)
        key_shares = shamir.split(bytes(mine["mask-secret"]), points, info.threshold)
        ciphertexts = {}
        for (node, (_, encryption_key, _)), seed_share, key_share in zip(
            neighbours.items(), seed_shares[1:], key_shares[1:], strict=False
        ):
            key = agreed_key(bytes(mine["encryption-secret"]), encryption_key, info.encryption_purpose())
            plaintext = pack_shares(self.node, node, seed_share, key_share)
            ciphertexts[str(node)] = encrypt(key, plaintext, info.share_context(self.node, node))
        mine[f"held/{self.node}"] = seed_shares[0].to_bytes() + key_shares[0].to_bytes()
        for node, entry in peers.items():
            mine[f"peer/{node}"] = bytes(entry)
        mine["stage"] = _SHARED
        return ConfigRecord(ciphertexts)

    def masked_input(
        self, info: StageInfo, ciphertexts: ConfigRecord, appended: np.ndarray | None = None
    ) -> np.ndarray:
        """The fixed-point update (then ``appended``: metric slots, never noised) plus the self mask plus one
        pairwise mask per neighbour still in the round."""
        mine = self._expect(info, _SHARED)
        senders = []
        for sender_text, ciphertext in ciphertexts.items():
            sender = int(sender_text)
            if f"peer/{sender}" not in mine:
                raise SecAggError(f"node {sender} is not one of this client's neighbours")
            _, encryption_key, _ = read_peer_entry(bytes(mine[f"peer/{sender}"]))
            key = agreed_key(bytes(mine["encryption-secret"]), encryption_key, info.encryption_purpose())
            try:
                plaintext = decrypt(key, bytes(ciphertext), info.share_context(sender, self.node))
            except ShareAuthenticationError:
                raise SecAggError(f"the share from node {sender} failed authentication: tampered, "
                                  f"or sent for another run, round or node") from None
            claimed_sender, recipient, seed_share, key_share = unpack_shares(plaintext)
            if (claimed_sender, recipient) != (sender, self.node):
                raise SecAggError(f"the share from node {sender} names {claimed_sender} -> {recipient}")
            mine[f"held/{sender}"] = seed_share.to_bytes() + key_share.to_bytes()
            senders.append(sender)
        vector = self.state[INPUT]["vector"].numpy()
        if info.noise_std > 0:  # distributed DP: this client's share of the noise on the update part
            noise_rng = np.random.default_rng(secrets.randbits(128))
            vector = vector.copy()
            vector[:-1] += noise_rng.normal(0.0, info.noise_std, vector.size - 1)
            truncated = int(np.count_nonzero(np.abs(vector[:-1]) > 1.0))
            if truncated:  # encoding would clip the noise: the release would carry less than is accounted
                raise SecAggError(f"{truncated} noised values left the value range; refusing to send truncated "
                                  f"noise (the run's secagg-value-range is too small for its DP noise)")
        if appended is not None:
            vector = np.concatenate([vector, appended])
        codec = FixedPoint(clip=1.0, num_summands=info.num_clients, bits=info.modulus_bits)
        masked = codec.encode(vector) + mask_stream(bytes(mine["seed"]), vector.size, codec.dtype)
        for sender in senders:
            _, _, mask_key = read_peer_entry(bytes(mine[f"peer/{sender}"]))
            pair_mask = mask_stream(agreed_key(bytes(mine["mask-secret"]), mask_key, info.mask_purpose()),
                                    vector.size, codec.dtype)
            masked = masked + pair_mask if pairwise_sign(self.node, sender) > 0 else masked - pair_mask
        del self.state[INPUT]
        mine["stage"] = _MASKED
        return masked

    def unmask(self, info: StageInfo) -> ConfigRecord:
        """Seed shares of surviving neighbours, mask-key shares of dropped ones; never both for a node."""
        mine = self._expect(info, _MASKED)
        survivors, dropped = set(info.survivors), set(info.dropped)
        if survivors & dropped:
            raise SecAggError(f"nodes {sorted(survivors & dropped)} are named both survived and dropped")
        if self.node not in survivors:
            raise SecAggError("this node sent its masked input but is not named a survivor")
        held = {int(key.split("/", 1)[1]) for key in mine if key.startswith("held/")}
        threshold = int(mine["threshold"])  # the one this client's secrets were split with, not the server's word now
        if len(survivors & held) < threshold:
            raise SecAggError(f"only {len(survivors & held)} of this node's share holders survived, "
                              f"fewer than the threshold {threshold}: nothing is revealed")
        half = len(bytes(mine[f"held/{self.node}"])) // 2
        revealed = {}
        for node in sorted(held & (survivors | dropped)):
            pair = bytes(mine[f"held/{node}"])
            kind, share = (SEED_SHARE, pair[:half]) if node in survivors else (KEY_SHARE, pair[half:])
            revealed[f"{kind}/{node}"] = share
        del self.state[STATE]
        return ConfigRecord(revealed)

    def _expect(self, info: StageInfo, stage: str) -> ConfigRecord:
        if STATE not in self.state:
            raise SecAggError(f"no secure round is pending on this node for round {info.server_round}")
        mine = self.state[STATE]
        if (str(mine["run"]), int(mine["server-round"])) != (info.run, info.server_round):
            raise SecAggError(f"message for run {info.run} round {info.server_round}, but this node's pending "
                              f"secure round is run {mine['run']} round {mine['server-round']}")
        if mine["stage"] != stage:
            raise SecAggError(f"stage {info.stage} arrived while this node's secure round is at '{mine['stage']}'")
        return mine
