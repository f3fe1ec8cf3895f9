"""The client half of secure aggregation: keys, shares, the masked update, and what it reveals.

Secrets (private keys, the self-mask seed, shares held for neighbours, the update
itself) live in the node's ``Context.state`` between messages and never leave the
device; each stage checks it is the next one for the same run and round. What the
client sends is decided by the run's config (as the device accepted it at stage 1: signed,
where the device holds the operator's key) and the device's own settings, never by a field
of a stage message: the noise it adds, the least threshold and neighbours it accepts, and,
under a roster, whose keys it accepts and which survivor set it reveals shares for.
"""

from __future__ import annotations

import json
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
    seed_commitment,
)
from stamen.shared.secagg_identity import Roster, keys_statement, survivors_statement
from stamen.shared.secagg_protocol import (
    CONSISTENCY_STAGE,
    ENCRYPTION_KEY,
    IDENTITY,
    KEY_SHARE,
    KEY_SIGNATURE,
    MASK_KEY,
    MASK_STAGE,
    SEED_COMMITMENT,
    SEED_SHARE,
    SHARE_STAGE,
    SIGNATURE,
    UNMASK_STAGE,
    PeerEntry,
    SecAggError,
    StageInfo,
    pack_shares,
    pairwise_sign,
    secure_weight,
    unpack_shares,
    update_vector,
)

from .secagg_checks import (
    IDENTITY_KEY,
    DeviceSettings,
    accepted_neighbours,
    check_layout,
    check_share_threshold,
    check_survivor_signatures,
    noise_share,
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
_ADVERTISED, _SHARED, _MASKED, _SIGNED = "advertised", "shared", "masked", "signed"


class SecAggClient:
    """One node's side of one secure round, kept in ``state`` (the node's Context.state)."""

    def __init__(self, state: RecordDict, node_id: int, settings: DeviceSettings | None = None) -> None:
        self.state = state
        self.node = node_id
        self.settings = settings or DeviceSettings()

    def advertise(self, config: RunConfig, session: str, server_round: int, vector: np.ndarray) -> ConfigRecord:
        """Keep ``vector`` (the update to sum, encoded units), ``config`` and fresh secrets; return the public keys,
        signed under the run's roster."""
        roster, identity = Roster(config.privacy.secagg_roster), self.settings.identity
        if roster and identity is None:
            raise SecAggError(f"the run lists its devices (secagg-roster), and this device has no identity key "
                              f"(node config {IDENTITY_KEY}) to sign its keys with")
        if roster and identity.fingerprint not in roster.fingerprints:
            raise SecAggError("this device's identity key is not on the run's roster")
        encryption, masking, seed = new_private_key(), new_private_key(), os.urandom(shamir.SECRET_BYTES)
        self.state[STATE] = ConfigRecord({
            "run": session, "server-round": server_round, "stage": _ADVERTISED,
            "encryption-secret": private_bytes(encryption), "mask-secret": private_bytes(masking),
            "seed": seed, "config": json.dumps(config.to_flat()),
        })
        self.state[INPUT] = ArrayRecord({"vector": Array(np.ascontiguousarray(vector, dtype=np.float64))})
        keys = {ENCRYPTION_KEY: public_bytes(encryption), MASK_KEY: public_bytes(masking),
                SEED_COMMITMENT: seed_commitment(seed)}
        if roster:
            statement = keys_statement(session, server_round, self.node, keys[ENCRYPTION_KEY], keys[MASK_KEY],
                                       keys[SEED_COMMITMENT])
            keys.update({IDENTITY: identity.public, KEY_SIGNATURE: identity.sign(statement)})
        return ConfigRecord(keys)

    def share_keys(self, info: StageInfo, peers: ConfigRecord) -> ConfigRecord:
        """Shamir-share the seed and mask key among the neighbours (and self); encrypt each pair of shares."""
        mine = self._expect(info, SHARE_STAGE, _ADVERTISED)
        config = _config(mine)
        privacy = config.privacy
        check_layout(info, config)
        neighbours = accepted_neighbours(info, peers, self.node, self.settings, privacy)
        check_share_threshold(info, len(neighbours) + 1, max(self.settings.min_threshold, privacy.secagg_threshold))
        mine["threshold"] = info.threshold
        points = [info.point] + [entry.point for entry in neighbours.values()]
        if len(set(points)) != len(points) or min(points) < 1:
            raise SecAggError("the Shamir points of this node and its neighbours must be distinct and positive")
        seed_shares = shamir.split(bytes(mine["seed"]), points, info.threshold)
        key_shares = shamir.split(bytes(mine["mask-secret"]), points, info.threshold)
        ciphertexts = {}
        for (node, entry), seed_share, key_share in zip(neighbours.items(), seed_shares[1:], key_shares[1:],
                                                        strict=True):
            key = agreed_key(bytes(mine["encryption-secret"]), entry.encryption_key, info.encryption_purpose())
            plaintext = pack_shares(self.node, node, seed_share, key_share)
            ciphertexts[str(node)] = encrypt(key, plaintext, info.share_context(self.node, node))
        mine[f"held/{self.node}"] = seed_shares[0].to_bytes() + key_shares[0].to_bytes()
        for node, entry in neighbours.items():
            mine[f"peer/{node}"] = entry.to_bytes()
        mine["stage"] = _SHARED
        return ConfigRecord(ciphertexts)

    def masked_input(
        self, info: StageInfo, ciphertexts: ConfigRecord, appended: np.ndarray | None = None
    ) -> np.ndarray:
        """The fixed-point update (then ``appended``: metric slots, never noised) plus the self mask plus one
        pairwise mask per neighbour still in the round."""
        mine = self._expect(info, MASK_STAGE, _SHARED)
        config = _config(mine)
        check_layout(info, config)
        senders = _open_shares(mine, ciphertexts, info, self.node)
        threshold = int(mine["threshold"])
        if len(senders) + 1 < threshold:  # too few pairwise masks: the self mask alone would hide the input
            raise SecAggError(f"only {len(senders)} of this node's neighbours sent it their shares; with fewer than "
                              f"{threshold - 1} its input would not be mixed with theirs")
        vector = self.state[INPUT]["vector"].numpy()
        vector = _with_noise_share(vector, config, info.num_clients)
        if appended is not None:
            vector = np.concatenate([vector, appended])
        codec = FixedPoint(clip=1.0, num_summands=info.num_clients, bits=info.modulus_bits)
        masked = codec.encode(vector) + mask_stream(bytes(mine["seed"]), vector.size, codec.dtype)
        for sender in senders:
            peer = PeerEntry.from_bytes(bytes(mine[f"peer/{sender}"]))
            pair_mask = mask_stream(agreed_key(bytes(mine["mask-secret"]), peer.mask_key, info.mask_purpose()),
                                    vector.size, codec.dtype)
            masked = masked + pair_mask if pairwise_sign(self.node, sender) > 0 else masked - pair_mask
        del self.state[INPUT]
        mine["stage"] = _MASKED
        return masked

    def sign_survivors(self, info: StageInfo) -> ConfigRecord:
        """The consistency round (under a roster): sign the set of nodes whose masked inputs the server says it
        holds; this device will reveal shares for that set and no other."""
        mine = self._expect(info, CONSISTENCY_STAGE, _MASKED)
        config = _config(mine)
        if not config.privacy.secagg_roster or self.settings.identity is None:
            raise SecAggError("a consistency stage, but the run has no roster for signatures")
        survivors = tuple(sorted(info.survivors))
        if len(set(survivors)) != len(survivors) or self.node not in survivors:
            raise SecAggError("the survivor set must name distinct nodes, this one among them")
        mine["survivors"] = list(survivors)
        mine["stage"] = _SIGNED
        return ConfigRecord({SIGNATURE: self.settings.identity.sign(
            survivors_statement(info.run, info.server_round, survivors))})

    def unmask(self, info: StageInfo, signatures: ConfigRecord | None = None) -> ConfigRecord:
        """Seed shares of the neighbours named survivors, mask-key shares of those that shared and are not named;
        never both for a node. Under a roster only for the set this device signed, shown signed by a threshold of
        roster devices."""
        mine = self.state.config_records.get(STATE)
        roster = Roster(_config(mine).privacy.secagg_roster) if mine is not None else Roster(())
        mine = self._expect(info, UNMASK_STAGE, _SIGNED if roster else _MASKED)
        survivors = set(info.survivors)
        threshold = int(mine["threshold"])  # the one this client's secrets were split with, not the server's word now
        if roster:
            if tuple(sorted(survivors)) != tuple(mine["survivors"]) or len(survivors) != len(info.survivors):
                raise SecAggError("the unmask stage names another survivor set than the one this device signed")
            check_survivor_signatures(info, signatures, roster, threshold)
        if self.node not in survivors:
            raise SecAggError("this node sent its masked input but is not named a survivor")
        held = {int(key.split("/", 1)[1]) for key in mine if key.startswith("held/")}
        neighbours = {int(key.split("/", 1)[1]) for key in mine if key.startswith("peer/")}
        if (survivors & neighbours) - held:  # a survivor this node added no pairwise mask with
            raise SecAggError(f"the survivor set names neighbours {sorted((survivors & neighbours) - held)[:5]} "
                              f"that never sent this node their shares: nothing is revealed")
        if len(survivors & held) < threshold:
            raise SecAggError(f"only {len(survivors & held)} of this node's share holders survived, "
                              f"fewer than the threshold {threshold}: nothing is revealed")
        half = len(bytes(mine[f"held/{self.node}"])) // 2
        revealed = {}
        for node in sorted(held):
            pair = bytes(mine[f"held/{node}"])
            kind, share = (SEED_SHARE, pair[:half]) if node in survivors else (KEY_SHARE, pair[half:])
            revealed[f"{kind}/{node}"] = share
        del self.state[STATE]
        return ConfigRecord(revealed)

    def _expect(self, info: StageInfo, stage: str, state: str) -> ConfigRecord:
        """This node's pending round, if ``info`` is its ``stage`` for that run and round and the round is at
        ``state``."""
        if info.stage != stage:
            raise SecAggError(f"a {info.stage!r} record where a {stage!r} one was due")
        if STATE not in self.state:
            raise SecAggError(f"no secure round is pending on this node for round {info.server_round}")
        mine = self.state[STATE]
        if (str(mine["run"]), int(mine["server-round"])) != (info.run, info.server_round):
            raise SecAggError(f"message for run {info.run} round {info.server_round}, but this node's pending "
                              f"secure round is run {mine['run']} round {mine['server-round']}")
        if mine["stage"] != state:
            raise SecAggError(f"stage {info.stage} arrived while this node's secure round is at '{mine['stage']}'")
        return mine


def _open_shares(mine: ConfigRecord, ciphertexts: ConfigRecord, info: StageInfo, node: int) -> list[int]:
    """Decrypt and keep the shares ``node``'s neighbours sent it (each authenticated for this run, round and pair);
    return who sent them."""
    senders = []
    for sender_text, ciphertext in ciphertexts.items():
        sender = int(sender_text)
        if f"peer/{sender}" not in mine:
            raise SecAggError(f"node {sender} is not one of this client's neighbours")
        peer = PeerEntry.from_bytes(bytes(mine[f"peer/{sender}"]))
        key = agreed_key(bytes(mine["encryption-secret"]), peer.encryption_key, info.encryption_purpose())
        try:
            plaintext = decrypt(key, bytes(ciphertext), info.share_context(sender, node))
        except ShareAuthenticationError:
            raise SecAggError(f"the share from node {sender} failed authentication: tampered, "
                              f"or sent for another run, round or node") from None
        claimed_sender, recipient, seed_share, key_share = unpack_shares(plaintext)
        if (claimed_sender, recipient) != (sender, node):
            raise SecAggError(f"the share from node {sender} names {claimed_sender} -> {recipient}")
        mine[f"held/{sender}"] = seed_share.to_bytes() + key_share.to_bytes()
        senders.append(sender)
    return senders


def _with_noise_share(vector: np.ndarray, config: RunConfig, num_clients: int) -> np.ndarray:
    """Distributed DP: the update part of ``vector`` with this client's share of the noise, or the vector as it
    is; noise the encoding would clip is refused, since the release would carry less than is accounted."""
    noise_std = noise_share(config, num_clients, vector.size - 1)
    if noise_std <= 0:
        return vector
    noised = vector.copy()
    noised[:-1] += np.random.default_rng(secrets.randbits(128)).normal(0.0, noise_std, vector.size - 1)
    truncated = int(np.count_nonzero(np.abs(noised[:-1]) > 1.0))
    if truncated:
        raise SecAggError(f"{truncated} noised values left the value range; refusing to send truncated "
                          f"noise (the run's secagg-value-range is too small for its DP noise)")
    return noised


def _config(mine: ConfigRecord) -> RunConfig:
    """The run config this device accepted when the round began."""
    return RunConfig.from_flat(json.loads(str(mine["config"])))
