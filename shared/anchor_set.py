"""The anchor set on the wire: a small general-domain set the server sends each node once per run.

The server puts the set's SHA-256 in the run config that travels with every
instruction; a client accepts the set only if its bytes hash to that value, so
a node can cache it and never needs it again, and a tampered or stale set is refused.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence

from flwr.app import ConfigRecord

ANCHOR = "replay-anchor-set"  # the message record carrying the set
_BLOB = "examples"


class AnchorMismatchError(ValueError):
    """The anchor set's bytes do not hash to the run config's ``replay-anchor-sha256``."""


def encode_anchor(pairs: Sequence[tuple[str | None, str]]) -> bytes:
    """(prompt, response) pairs as canonical JSON bytes (same pairs, same hash)."""
    if not pairs:
        raise ValueError("an anchor set needs at least one example")
    return json.dumps([[prompt, response] for prompt, response in pairs], ensure_ascii=False).encode()


def anchor_digest(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def decode_anchor(blob: bytes, expected_sha256: str) -> list[tuple[str | None, str]]:
    """The pairs, after checking the bytes against the hash from the run config."""
    actual = anchor_digest(blob)
    if actual != expected_sha256:
        raise AnchorMismatchError(f"anchor set hashes to {actual[:12]}, the run config says {expected_sha256[:12]}")
    return [(prompt, response) for prompt, response in json.loads(blob)]


def anchor_record(blob: bytes) -> ConfigRecord:
    return ConfigRecord({_BLOB: blob})


def anchor_blob(record: ConfigRecord) -> bytes:
    return bytes(record[_BLOB])
