"""Who a secure-aggregation peer is: a device's identity key, the statements it signs, and the operator's roster.

A server that lies could put X25519 keys of its own in a device's peer list (and decrypt every share the
device encrypts for that "peer") or invent neighbours to reach a share threshold alone. So under a roster
(``secagg-roster``: the SHA-256 fingerprints of the run's devices' public keys, in the config the operator
signs) every device signs its two X25519 keys with its identity key, bound to session, round and node, and
accepts a peer only with keys signed by a roster device. A device's identity key is its node key, the one
Flower's SuperNode authenticates with (EC or Ed25519, OpenSSH format), so a device keeps one key.

Devices also sign the set of clients whose masked inputs the server says it holds (the consistency round
of Bonawitz et al. 2017) and reveal shares only for a set at least a threshold of them signed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from .secagg_protocol import SecAggError

MAX_IDENTITY_BYTES = 512  # an OpenSSH public-key line: about 200 bytes for P-384
MAX_SIGNATURE_BYTES = 160  # DER ECDSA P-521 is at most 139 bytes, Ed25519 64

SigningKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class DeviceIdentity:
    """A device's signing key and its public half as an OpenSSH line (what a roster fingerprints)."""

    key: SigningKey
    public: bytes

    @classmethod
    def load(cls, path: Path) -> DeviceIdentity:
        """The node key at ``path`` (OpenSSH private key, as ``stamen certs`` writes and the SuperNode reads)."""
        try:
            key = serialization.load_ssh_private_key(path.read_bytes(), password=None)
        except (ValueError, UnsupportedAlgorithm) as error:
            raise SecAggError(f"identity key {path} is not an OpenSSH private key: {error}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
            raise SecAggError(f"identity key {path} is a {type(key).__name__}; an EC or Ed25519 key signs")
        return cls.of(key)

    @classmethod
    def of(cls, key: SigningKey) -> DeviceIdentity:
        return cls(key, public_line(key.public_key()))

    @classmethod
    def generate(cls) -> DeviceIdentity:
        """A fresh P-384 identity, the curve of the node keys ``stamen certs`` makes."""
        return cls.of(ec.generate_private_key(ec.SECP384R1()))

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.public)

    def sign(self, statement: bytes) -> bytes:
        if isinstance(self.key, ec.EllipticCurvePrivateKey):
            return self.key.sign(statement, ec.ECDSA(hashes.SHA384()))
        return self.key.sign(statement)


def public_line(public_key: ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def fingerprint(identity: bytes) -> str:
    """SHA-256 (hex) of a public key's canonical OpenSSH line: a comment or spacing does not change it."""
    return hashlib.sha256(public_line(_public_key(identity))).hexdigest()


def roster_of(public_key_files: Iterable[Path]) -> tuple[str, ...]:
    """The fingerprints of these devices' public keys (``nodes/*.pub``), sorted: a run's roster."""
    return tuple(sorted(fingerprint(path.read_bytes().strip()) for path in public_key_files))


def verify(identity: bytes, signature: bytes, statement: bytes) -> None:
    """Raise :class:`SecAggError` unless ``signature`` is ``identity``'s over ``statement``."""
    if len(signature) > MAX_SIGNATURE_BYTES:
        raise SecAggError(f"a signature of {len(signature)} bytes is longer than any this protocol makes")
    key = _public_key(identity)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, statement, ec.ECDSA(hashes.SHA384()))
        else:
            key.verify(signature, statement)
    except InvalidSignature:
        raise SecAggError("a signature does not verify: forged, or made for another run, round, node or set") \
            from None


def keys_statement(session: str, server_round: int, node: int, encryption_key: bytes, mask_key: bytes,
                   seed_commitment: bytes) -> bytes:
    """What a device signs when it advertises its keys and its seed's commitment: they are its own, for this
    session, round and node."""
    return (b"stamen-secagg-keys\0" + f"{session}\0{server_round}\0{node}\0".encode() + encryption_key + mask_key
            + seed_commitment)


def survivors_statement(session: str, server_round: int, survivors: Sequence[int]) -> bytes:
    """What a device signs in the consistency round: the server holds masked inputs of exactly these nodes."""
    return b"stamen-secagg-survivors\0" + f"{session}\0{server_round}\0{','.join(map(str, sorted(survivors)))}".encode()


class Roster:
    """The devices an operator lets take part in a run, by public-key fingerprint."""

    def __init__(self, fingerprints: Iterable[str]) -> None:
        self.fingerprints = frozenset(fingerprints)

    def __bool__(self) -> bool:
        return bool(self.fingerprints)

    def __len__(self) -> int:
        return len(self.fingerprints)

    def admit(self, identity: bytes, signature: bytes, statement: bytes) -> str:
        """The fingerprint of ``identity`` once it is on the roster and signed ``statement``; else SecAggError."""
        if not isinstance(identity, bytes) or not isinstance(signature, bytes):
            raise SecAggError("an identity and its signature must be bytes")
        found = fingerprint(identity)
        if found not in self.fingerprints:
            raise SecAggError(f"identity {found[:16]} is not on the run's roster")
        verify(identity, signature, statement)
        return found


def _public_key(identity: bytes) -> ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey:
    if not isinstance(identity, bytes) or not 0 < len(identity) <= MAX_IDENTITY_BYTES:
        raise SecAggError(f"an identity must be an OpenSSH public key of at most {MAX_IDENTITY_BYTES} bytes")
    try:
        key = serialization.load_ssh_public_key(identity)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise SecAggError(f"an identity is not an OpenSSH public key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey):
        raise SecAggError(f"an identity is a {type(key).__name__}; only EC and Ed25519 keys sign here")
    return key
