"""What a device accepts in a secure round: its own settings, and the checks of each stage against them and the
run's config (signed, where the device holds the operator's key), whatever the server declares.

A server that lies may name keys of its own or invented neighbours, a survivor set nobody signed, more clients
than take part (so each adds less noise), or another modulus. Each check here refuses one such message with
a :class:`SecAggError` naming it, before the device acts on it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flwr.app import ConfigRecord

from stamen.shared.config import PrivacySpec, RunConfig
from stamen.shared.secagg_identity import DeviceIdentity, Roster, keys_statement, survivors_statement
from stamen.shared.secagg_protocol import PeerEntry, SecAggError, StageInfo, distributed_noise_std, share_threshold

MIN_THRESHOLD_KEY = "secagg-min-threshold"  # node config: the device's own least share threshold
MIN_NEIGHBOURS_KEY = "secagg-min-neighbours"  # node config: the fewest neighbours the device shares its secrets among
IDENTITY_KEY = "identity-key"  # node config: path of the device's node key, which signs its secure-aggregation keys
DEFAULT_MIN_THRESHOLD = 0.5  # a majority of the share holders


@dataclass(frozen=True)
class DeviceSettings:
    """What the device itself demands of a secure round (its node config), whatever the server or the run asks."""

    min_threshold: float = DEFAULT_MIN_THRESHOLD  # its secrets need more than this share of their holders
    min_neighbours: int = 1  # it shares its secrets among at least this many neighbours
    identity: DeviceIdentity | None = None  # signs its keys and the survivor set under a roster

    def __post_init__(self) -> None:
        if not 0.5 <= self.min_threshold < 1:
            raise SecAggError(f"{MIN_THRESHOLD_KEY} must be in [0.5, 1), got {self.min_threshold}")
        if self.min_neighbours < 1:
            raise SecAggError(f"{MIN_NEIGHBOURS_KEY} must be >= 1, got {self.min_neighbours}")

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> DeviceSettings:
        identity = node_config.get(IDENTITY_KEY)
        return cls(float(node_config.get(MIN_THRESHOLD_KEY, DEFAULT_MIN_THRESHOLD)),
                   int(node_config.get(MIN_NEIGHBOURS_KEY, 1)),
                   DeviceIdentity.load(Path(str(identity))) if identity else None)


def accepted_neighbours(info: StageInfo, peers: ConfigRecord, node: int, settings: DeviceSettings,
                        privacy: PrivacySpec) -> dict[int, PeerEntry]:
    """The neighbours the server names for ``node``, if this device accepts them: other nodes, at least as many
    as the device and the run demand, fewer than the clients, and under a roster each authenticated."""
    try:
        neighbours = {int(name): PeerEntry.from_bytes(entry) for name, entry in peers.items()}
    except ValueError as error:
        raise SecAggError(f"malformed neighbour list: {error}") from None
    if node in neighbours or not neighbours:
        raise SecAggError("the neighbour list must name other nodes, not this one")
    least_neighbours = max(settings.min_neighbours, privacy.secagg_min_neighbours)
    if len(neighbours) < least_neighbours:
        raise SecAggError(f"the server names {len(neighbours)} neighbours; this device shares its secrets among "
                          f"at least {least_neighbours}")
    if len(neighbours) >= info.num_clients:
        raise SecAggError(f"{len(neighbours)} neighbours among {info.num_clients} clients")
    roster = Roster(privacy.secagg_roster)
    if roster:
        authenticate_neighbours(info, neighbours, roster, settings.identity)
    return neighbours


def check_share_threshold(info: StageInfo, holders: int, fraction: float) -> None:
    """The server's share threshold among ``holders``: at least what ``fraction`` of them needs, at most all."""
    least = share_threshold(holders, fraction)
    if not least <= info.threshold <= holders:
        raise SecAggError(f"the server asks for a share threshold of {info.threshold} among {holders} holders; "
                          f"this client needs at least {least} (threshold {fraction})")


def authenticate_neighbours(info: StageInfo, neighbours: dict[int, PeerEntry], roster: Roster,
                            identity: DeviceIdentity) -> None:
    """Every neighbour's keys signed for this session, round and node by a distinct roster device, none of them
    this device (``identity``)."""
    seen = {identity.fingerprint}
    for node, entry in neighbours.items():
        statement = keys_statement(info.run, info.server_round, node, entry.encryption_key, entry.mask_key,
                                   entry.seed_commitment)
        try:
            found = roster.admit(entry.identity, entry.signature, statement)
        except SecAggError as reason:
            raise SecAggError(f"neighbour {node}'s keys are not signed by a roster device: {reason}") from None
        if found in seen:
            raise SecAggError(f"neighbour {node} has the identity of another neighbour or of this device")
        seen.add(found)


def check_survivor_signatures(info: StageInfo, signatures: ConfigRecord | None, roster: Roster, threshold: int) -> None:
    """At least ``threshold`` distinct roster devices among the survivors signed this survivor set."""
    statement = survivors_statement(info.run, info.server_round, info.survivors)
    signers: set[str] = set()
    for node_text, entry in (signatures or {}).items():
        try:
            peer = PeerEntry.from_bytes(bytes(entry))
            if int(node_text) in info.survivors:
                signers.add(roster.admit(peer.identity, peer.signature, statement))
        except (SecAggError, ValueError, TypeError):
            continue
    if len(signers) < threshold:
        raise SecAggError(f"the survivor set carries {len(signers)} valid signatures of roster devices, fewer "
                          f"than the threshold {threshold}: nothing is revealed")


def check_layout(info: StageInfo, config: RunConfig) -> None:
    """The server's declared layout against the run's config: its modulus, and no more clients than listed."""
    if info.modulus_bits != config.privacy.secagg_modulus_bits:
        raise SecAggError(f"the server declares a {info.modulus_bits}-bit modulus; the run's is "
                          f"{config.privacy.secagg_modulus_bits}")
    roster_size = len(config.privacy.secagg_roster) or info.num_clients
    if not 2 <= info.num_clients <= roster_size:
        raise SecAggError(f"the server declares {info.num_clients} clients; a secure round has 2 to {roster_size}")


def noise_share(config: RunConfig, num_clients: int, num_values: int) -> float:
    """Distributed DP: this client's share of the noise, in encoded units, from the run's config; the server only
    says among how many clients the noise is shared, and a count so small that the run's value range would
    truncate the share is refused."""
    privacy = config.privacy
    if privacy.dp != "distributed":
        return 0.0
    value_range, needed = config.secure_value_range(), config.noise_value_range(num_clients, max(num_values, 1))
    if needed > value_range:
        raise SecAggError(f"the server shares the noise among {num_clients} clients, whose shares need a value "
                          f"range of {needed:.4g}, more than the run's {value_range:.4g}: they would be truncated")
    return distributed_noise_std(privacy.dp_noise_multiplier, privacy.dp_clip, value_range, num_clients)
