"""What both sides of secure aggregation agree on: stages, record names, and the byte layouts.

A secure round (SecAgg+, Bell et al. 2020) runs its exchanges on ``train`` messages, and the
round's evaluation on ``evaluate`` messages; stages 2-5 carry a ``secagg`` record naming the
stage, which the client's secure-aggregation mod (``client/secure_aggregation_mod.py``) answers
without the handler:

1. ``train`` / ``evaluate`` — the client trains (evaluates) and keeps its update and metric values
   on the device; it replies with two X25519 public keys (one to encrypt shares, one for pairwise
   masks), signed with its identity key under a roster, and the names of its metrics.
2. ``secagg_share`` — the server sends each client its neighbours' keys; the
   client checks them against the roster, Shamir-shares its self-mask seed and mask private key
   among them and replies with the shares, each encrypted for one neighbour.
3. ``secagg_mask`` — the server routes the encrypted shares and names the metrics every
   client reported; the client replies with its fixed-point update, weight and those metrics
   plus its self mask plus pairwise masks.
4. ``secagg_consistency`` (under a roster only) — the server names every client whose masked input
   it holds; each signs that set.
5. ``secagg_unmask`` — the server names that set again (under a roster with a threshold of
   signatures on it); the client reveals self-mask shares of the named neighbours and mask-key
   shares of those it holds shares of that are not named, never both for one node.

Everything that decides what a client sends comes from the run's (signed) config and the device's
own settings; a stage record declares only the round's layout (who, which point, how many), and a
record with any other field is refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from flwr.app import ConfigRecord

from .config import PrivacySpec
from .shamir import Share

SHARE_STAGE = "secagg_share"
MASK_STAGE = "secagg_mask"
CONSISTENCY_STAGE = "secagg_consistency"
UNMASK_STAGE = "secagg_unmask"

SECAGG = "secagg"  # ConfigRecord: the stage's parameters
PUBLIC_KEYS = "secagg-public-keys"  # client -> server (stage 1)
PEERS = "secagg-peers"  # server -> client (stage 2): node id -> point || encryption key || mask key
SHARES = "secagg-shares"  # stage 2 reply: recipient -> ciphertext; stage 3 message: sender -> ciphertext
MASKED = "secagg-masked"  # ArrayRecord, stage 3 reply
METRIC_NAMES = "secagg-metric-names"  # client -> server (stage 1): "names" -> the metrics it can sum
SIGNED = "secagg-signed"  # consistency reply: "signature" -> the client's signature of the named set
SIGNATURES = "secagg-signatures"  # unmask message (roster): node -> identity entry of its signature of the set
REVEALED = "secagg-revealed"  # unmask reply: "seed/<node>" or "key/<node>" -> share
ENCRYPTION_KEY = "encryption-key"
MASK_KEY = "mask-key"
SEED_COMMITMENT = "seed-commitment"  # stage 1: SHA-256 of the self-mask seed, checked when it is rebuilt
IDENTITY = "identity"  # stage 1 (roster): the client's public identity key, an OpenSSH line
KEY_SIGNATURE = "signature"  # stage 1 (roster): its signature of the two keys (``keys_statement``)
SIGNATURE = "signature"
STAGE_RECORDS = {  # what a server message of each stage may carry besides the stage record
    SHARE_STAGE: frozenset({PEERS}), MASK_STAGE: frozenset({SHARES}), CONSISTENCY_STAGE: frozenset(),
    UNMASK_STAGE: frozenset({SIGNATURES}),
}
SEED_SHARE, KEY_SHARE = "seed", "key"
MASKED_VECTOR = "masked"


class SecAggError(ValueError):
    """A secure-aggregation message that must not be acted on; the message says why."""


@dataclass(frozen=True)
class StageInfo:
    """What the server declares with every stage after the first: the round's layout, nothing a client's
    privacy rests on (noise, thresholds' least, who may take part come from the signed config)."""

    run: str  # the session: run id and message type
    server_round: int
    stage: str
    num_clients: int  # clients that advertised keys: the fixed-point codec's summands, the noise's shares
    threshold: int  # shares needed to rebuild one client's secrets
    point: int  # this client's Shamir point
    modulus_bits: int
    survivors: tuple[int, ...] = ()  # consistency and unmask stages: every node whose masked input arrived
    metrics: tuple[str, ...] = ()  # mask stage: the metric names summed after the weight, in order

    def to_record(self) -> ConfigRecord:
        return ConfigRecord({
            "run": self.run, "server-round": self.server_round, "stage": self.stage,
            "num-clients": self.num_clients, "threshold": self.threshold, "point": self.point,
            "modulus-bits": self.modulus_bits, "survivors": list(self.survivors), "metrics": list(self.metrics),
        })

    @classmethod
    def from_record(cls, record: ConfigRecord) -> StageInfo:
        unknown = sorted(set(record) - _STAGE_FIELDS)
        if unknown:
            raise SecAggError(f"the stage record carries fields this protocol does not have: {unknown[:5]}")
        try:
            return cls(str(record["run"]), int(record["server-round"]), str(record["stage"]),
                       int(record["num-clients"]), int(record["threshold"]), int(record["point"]),
                       int(record["modulus-bits"]), tuple(int(n) for n in record["survivors"]),
                       tuple(str(name) for name in record["metrics"]))
        except (KeyError, TypeError, ValueError) as error:
            raise SecAggError(f"malformed secure-aggregation stage record: {error}") from None

    def share_context(self, sender: int, recipient: int) -> bytes:
        """Associated data of one encrypted share: binds it to run, round, sender and recipient."""
        return f"{self.run}/{self.server_round}/{sender}->{recipient}".encode()

    def mask_purpose(self) -> bytes:
        return f"mask/{self.run}/{self.server_round}".encode()

    def encryption_purpose(self) -> bytes:
        return f"shares/{self.run}/{self.server_round}".encode()


_STAGE_FIELDS = frozenset(StageInfo("", 0, "", 0, 0, 0, 0).to_record())


def pack_shares(sender: int, recipient: int, seed_share: Share, key_share: Share) -> bytes:
    """Plaintext of one encrypted message: who sent it to whom, and the two shares."""
    return sender.to_bytes(8, "big") + recipient.to_bytes(8, "big") + seed_share.to_bytes() + key_share.to_bytes()


def unpack_shares(plaintext: bytes) -> tuple[int, int, Share, Share]:
    half = (len(plaintext) - 16) // 2
    return (int.from_bytes(plaintext[:8], "big"), int.from_bytes(plaintext[8:16], "big"),
            Share.from_bytes(plaintext[16:16 + half]), Share.from_bytes(plaintext[16 + half:]))


def share_threshold(holders: int, fraction: float) -> int:
    """Shares needed to rebuild a secret held by ``holders`` (a client and its neighbours): more than
    ``fraction`` of them. With ``fraction`` >= 0.5 no two disjoint groups of holders both reach it, so a
    server cannot collect a client's seed shares from one group and its mask-key shares from another."""
    return min(holders, math.floor(fraction * holders) + 1)


def pairwise_sign(node: int, peer: int) -> int:
    """+1 if ``node`` adds the pair's mask, -1 if it subtracts it: the two cancel in the sum."""
    return 1 if node < peer else -1


@dataclass(frozen=True)
class PeerEntry:
    """A client's stage-1 keys as the server introduces it to a neighbour: its Shamir point, its two public keys,
    its seed's commitment, and (under a roster) its identity and signature of the three."""

    point: int
    encryption_key: bytes
    mask_key: bytes
    seed_commitment: bytes = bytes(32)
    identity: bytes = b""
    signature: bytes = b""

    def to_bytes(self) -> bytes:
        return (self.point.to_bytes(4, "big") + self.encryption_key + self.mask_key + self.seed_commitment
                + len(self.identity).to_bytes(2, "big") + self.identity + self.signature)

    @classmethod
    def advertised(cls, point: int, keys: ConfigRecord) -> PeerEntry:
        """The entry for a client's stage-1 keys record (checked by the server's admission first)."""
        return cls(point, bytes(keys[ENCRYPTION_KEY]), bytes(keys[MASK_KEY]), bytes(keys[SEED_COMMITMENT]),
                   bytes(keys.get(IDENTITY, b"")), bytes(keys.get(KEY_SIGNATURE, b"")))

    @classmethod
    def from_bytes(cls, entry: bytes) -> PeerEntry:
        if not isinstance(entry, bytes) or not _PEER_FIXED_BYTES <= len(entry) <= MAX_PEER_ENTRY_BYTES:
            raise SecAggError(f"a peer entry is {_PEER_FIXED_BYTES} to {MAX_PEER_ENTRY_BYTES} bytes")
        identity_end = _PEER_FIXED_BYTES + int.from_bytes(entry[100:102], "big")
        if identity_end > len(entry):
            raise SecAggError("a peer entry's identity runs past its end")
        return cls(int.from_bytes(entry[:4], "big"), entry[4:36], entry[36:68], entry[68:100],
                   entry[_PEER_FIXED_BYTES:identity_end], entry[identity_end:])


_PEER_FIXED_BYTES = 102  # point, two 32-byte keys, the 32-byte seed commitment, the identity's length
MAX_PEER_ENTRY_BYTES = 1024


def secure_weight(num_examples: float, privacy: PrivacySpec) -> float:
    """A client's weight in a secure sum: 1 under distributed DP, otherwise its example count clamped to
    [``secagg-min-weight``, ``secagg-max-weight``] over ``secagg-max-weight``."""
    if privacy.dp == "distributed":
        return 1.0
    clamped = min(max(num_examples, privacy.secagg_min_weight), privacy.secagg_max_weight)
    return clamped / privacy.secagg_max_weight


def weight_bounds(privacy: PrivacySpec) -> tuple[float, float]:
    """The least and the most weight an honest client puts in a secure sum (see :func:`secure_weight`)."""
    return secure_weight(0.0, privacy), secure_weight(float("inf"), privacy)


def update_vector(delta_flat: np.ndarray, weight: float, value_range: float) -> np.ndarray:
    """What a client sums securely: its delta times its weight, over the value range, then the weight.

    Weights are in (0, 1] (see :func:`secure_weight`), so every coordinate lies in [-1, 1] unless
    the delta leaves the declared range (then it is clipped).
    """
    return np.append(delta_flat * (weight / value_range), weight)


def read_sum(
    total: np.ndarray, value_range: float, num_values: int, num_uploads: int = 0
) -> tuple[np.ndarray, list[np.ndarray], float, np.ndarray]:
    """From a decoded secure sum: the weighted sum of deltas, of each extra upload (a rule's, e.g. SCAFFOLD's
    control change, summed like the delta), the total weight, and the sums of the metric slots after it
    (:mod:`~stamen.shared.secure_metrics`)."""
    parts = [total[i * num_values:(i + 1) * num_values] * value_range for i in range(1 + num_uploads)]
    weight_at = (1 + num_uploads) * num_values
    return parts[0], parts[1:], float(total[weight_at]), total[weight_at + 1:]


def session(run_id: str, message_type: str) -> str:
    """What a secure sum is bound to: a round's train and evaluate sums use different keys and masks."""
    return f"{run_id}/{message_type}"


def distributed_noise_std(noise_multiplier: float, clip: float, value_range: float, num_clients: int) -> float:
    """Each of ``num_clients`` clients' noise share, in encoded units, so the sum carries std ``z * C``."""
    return noise_multiplier * clip / (value_range * math.sqrt(num_clients))

