"""The operator's signature on a run's configuration, so devices run only what the operator started.

A device trusts the operator's Ed25519 public key (``stamen certs`` writes ``operator.key`` and
``operator.pub``), not the server it talks to. ``stamen server start`` signs the flat run config
it submits; the signature travels as one more config entry. A device that holds the operator's
key checks it before any app code is loaded and again on every message, so a server that
changes a setting (turns secure aggregation off, say) or starts a run of its own is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from .atomic import atomic_write_bytes
from .config import RunConfig

SIGNATURE_KEY = "operator-signature"  # the config entry carrying the signature


class UntrustedRun(RuntimeError):
    """A run whose configuration the operator did not sign (or signed differently)."""


def signed_bytes(flat: Mapping[str, object]) -> bytes:
    """The canonical bytes of a flat config, the signature entry left out."""
    return json.dumps({k: v for k, v in sorted(flat.items()) if k != SIGNATURE_KEY}, separators=(",", ":"),
                      sort_keys=True).encode()


def sign_config(flat: Mapping[str, object], private_key: Path) -> dict[str, object]:
    """``flat`` with the operator's signature added."""
    key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise UntrustedRun(f"{private_key} is not an Ed25519 private key")
    return {**flat, SIGNATURE_KEY: base64.b64encode(key.sign(signed_bytes(flat))).decode()}


def sign_run(config: RunConfig, private_key: Path) -> RunConfig:
    """``config`` carrying the operator's signature over all its other keys."""
    signed = sign_config(config.to_flat(), private_key)
    return config.replace(**{SIGNATURE_KEY: signed[SIGNATURE_KEY]})


def check_config(flat: Mapping[str, object], public_key: Path) -> None:
    """Raise :class:`UntrustedRun` unless ``flat`` carries the operator's valid signature."""
    key = serialization.load_pem_public_key(public_key.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise UntrustedRun(f"{public_key} is not an Ed25519 public key")
    signature = flat.get(SIGNATURE_KEY)
    if not isinstance(signature, str) or not signature:
        raise UntrustedRun("the run's configuration carries no operator signature")
    try:
        key.verify(base64.b64decode(signature, validate=True), signed_bytes(flat))
    except (InvalidSignature, binascii.Error, ValueError):
        raise UntrustedRun("the run's configuration is not signed by this device's operator key") from None


def write_operator_keys(folder: Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair as ``operator.key`` (PKCS#8 PEM) and ``operator.pub`` in ``folder``."""
    key = Ed25519PrivateKey.generate()
    private, public = folder / "operator.key", folder / "operator.pub"
    atomic_write_bytes(private, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    atomic_write_bytes(public, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public
