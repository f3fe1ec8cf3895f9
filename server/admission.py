"""What a client reply must pass before the server uses it.

A reply that fails is refused with the reason (the strategy logs it, records it and goes
on with the round): an error reply, missing records, another base, a non-positive or
non-finite example count, a missing upload, missing secure-aggregation keys, or an
adapter delta whose keys, shapes, dtype or values are not the run's.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Message

from stamen.shared.fingerprint import BaseMismatchError, check_same_base
from stamen.shared.protocol import ARRAYS, CLIENT_INFO, CLIENT_NAME, FINGERPRINT, METRICS, NUM_EXAMPLES
from stamen.shared.secagg_protocol import ENCRYPTION_KEY, MASK_KEY, PUBLIC_KEYS
from stamen.shared.wire import AdapterSchema, AdapterValidationError, decode_adapter

from .rules import ClientUpdate

PUBLIC_KEY_BYTES = 32


class UpdateRejected(ValueError):
    """A client reply that must not reach aggregation; the message says why."""


def client_name(msg: Message) -> str:
    """The name a reply gives for its client, ``?`` when it gives none."""
    if msg.has_error() or CLIENT_INFO not in msg.content.config_records:
        return "?"
    return str(msg.content[CLIENT_INFO].get(CLIENT_NAME, "?"))


def admit_reply(msg: Message, fingerprint: str) -> None:
    """Checks every reply must pass: no error, same base, a positive example count."""
    if msg.has_error():
        raise UpdateRejected(f"client reported an error: {msg.error.reason}")
    content = msg.content
    if CLIENT_INFO not in content.config_records or METRICS not in content.metric_records:
        raise UpdateRejected("reply lacks the client info or metrics record")
    info = content[CLIENT_INFO]
    if FINGERPRINT not in info:
        raise UpdateRejected("reply carries no base fingerprint")
    try:
        check_same_base(fingerprint, str(info[FINGERPRINT]), "server vs client")
    except BaseMismatchError as error:
        raise UpdateRejected(str(error)) from error
    examples = content[METRICS].get(NUM_EXAMPLES)
    if not isinstance(examples, int | float) or not np.isfinite(examples) or examples <= 0:
        raise UpdateRejected(f"'{NUM_EXAMPLES}' must be a positive number, got {examples!r}")


def admit_update(msg: Message, fingerprint: str, schema: AdapterSchema, extra_uploads: tuple[str, ...]) -> ClientUpdate:
    """A train reply as the update the rule aggregates: its delta, weight and extra uploads, each validated."""
    admit_reply(msg, fingerprint)
    records = msg.content.array_records
    for name in (ARRAYS, *extra_uploads):
        if name not in records:
            raise UpdateRejected(f"training reply carries no '{name}' record")
    try:
        delta = decode_adapter(records[ARRAYS], schema)
        extras = {name: decode_adapter(records[name], schema) for name in extra_uploads}
    except AdapterValidationError as error:
        raise UpdateRejected(f"malformed adapter delta: {error}") from error
    return ClientUpdate(client_name(msg), delta, float(msg.content[METRICS][NUM_EXAMPLES]), extras)


def admit_key_reply(msg: Message, fingerprint: str) -> None:
    """Secure round, stage 1: a reply must also carry this client's two public keys."""
    admit_reply(msg, fingerprint)
    keys = msg.content.config_records.get(PUBLIC_KEYS)
    if keys is None or any(len(bytes(keys.get(name, b""))) != PUBLIC_KEY_BYTES for name in (ENCRYPTION_KEY, MASK_KEY)):
        raise UpdateRejected(f"secure-aggregation reply lacks two {PUBLIC_KEY_BYTES}-byte public keys")
