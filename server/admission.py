"""What a client reply must pass before the server uses it.

Every byte of a reply is the client's to choose, so every value is checked for type,
size and range before use. A reply that fails is refused with the reason (the round
logs it, records it and goes on with the round): an error reply, missing records, another
base, a client name or metric that is not a short string or a finite number, a non-positive
example count, a missing upload, an upload larger than the adapter schema allows (refused
before decoding), missing or malformed secure-aggregation keys (or, under a roster, keys no
listed device signed), or an adapter delta whose
keys, shapes, dtype or values are not the run's. Anything else a malformed reply makes a
decoder raise is a refusal too, never an error that ends the round.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Iterator

from flwr.app import Message, MetricRecord

from stamen.shared.fingerprint import BaseMismatchError, check_same_base
from stamen.shared.protocol import ARRAYS, CLIENT_INFO, CLIENT_NAME, FINGERPRINT, METRICS, NUM_EXAMPLES
from stamen.shared.secagg_identity import Roster, keys_statement
from stamen.shared.secagg_protocol import (
    ENCRYPTION_KEY,
    IDENTITY,
    KEY_SIGNATURE,
    MASK_KEY,
    METRIC_NAMES,
    PUBLIC_KEYS,
    SEED_COMMITMENT,
    SecAggError,
)
from stamen.shared.wire import AdapterSchema, AdapterValidationError, decode_adapter

from .rules import ClientUpdate

PUBLIC_KEY_BYTES = 32
MAX_METRICS = 64  # honest replies carry about a dozen
MAX_TEXT_CHARS = 200  # client names and fingerprints
ARRAY_HEADER_BYTES = 512  # allowance per array for its .npy header and key


class UpdateRejected(ValueError):
    """A client reply that must not reach aggregation; the message says why."""


def client_name(msg: Message) -> str:
    """The name a reply gives for its client, ``?`` when it gives none or one that is not a short string."""
    if msg.has_error() or CLIENT_INFO not in msg.content.config_records:
        return "?"
    name = msg.content[CLIENT_INFO].get(CLIENT_NAME)
    return name if isinstance(name, str) and len(name) <= MAX_TEXT_CHARS else "?"


@contextlib.contextmanager
def _refusing_malformed() -> Iterator[None]:
    """Whatever a malformed reply makes a decoder raise inside this block becomes a refusal of that reply."""
    try:
        yield
    except UpdateRejected:
        raise
    except Exception as error:  # a client chose these bytes: any failure to read them is its reply's fault
        raise UpdateRejected(f"malformed reply ({type(error).__name__}: {str(error)[:MAX_TEXT_CHARS]})") from error


def admit_reply(msg: Message, fingerprint: str, uploads: tuple[str, ...] = ()) -> None:
    """Checks every reply must pass: no error, only the expected records (client info, metrics and
    ``uploads``), same base, numeric metrics, a positive example count."""
    with _refusing_malformed():
        if msg.has_error():
            raise UpdateRejected(f"client reported an error: {str(msg.error.reason)[:MAX_TEXT_CHARS]}")
        content = msg.content
        unexpected = sorted(set(content) - {CLIENT_INFO, METRICS, *uploads})
        if unexpected:
            raise UpdateRejected(f"reply carries unexpected records {[name[:40] for name in unexpected[:3]]}")
        if CLIENT_INFO not in content.config_records or METRICS not in content.metric_records:
            raise UpdateRejected("reply lacks the client info or metrics record")
        info = content[CLIENT_INFO]
        if FINGERPRINT not in info:
            raise UpdateRejected("reply carries no base fingerprint")
        for key in (FINGERPRINT, CLIENT_NAME):
            if key in info and not (isinstance(info[key], str) and len(info[key]) <= MAX_TEXT_CHARS):
                raise UpdateRejected(f"'{key}' must be a string of at most {MAX_TEXT_CHARS} characters")
        try:
            check_same_base(fingerprint, info[FINGERPRINT], "server vs client")
        except BaseMismatchError as error:
            raise UpdateRejected(str(error)) from error
        check_metrics(content[METRICS])
        examples = content[METRICS].get(NUM_EXAMPLES)
        if examples is None or examples <= 0:
            raise UpdateRejected(f"'{NUM_EXAMPLES}' must be a positive number, got {examples!r}")


def check_metrics(metrics: MetricRecord) -> None:
    """Every metric a single finite number (a list would break averaging), and not too many of them."""
    if len(metrics) > MAX_METRICS:
        raise UpdateRejected(f"reply carries {len(metrics)} metrics, more than {MAX_METRICS}")
    for key, value in metrics.items():
        if len(key) > MAX_TEXT_CHARS:
            raise UpdateRejected(f"a metric name is longer than {MAX_TEXT_CHARS} characters")
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise UpdateRejected(f"metric '{key}' must be a finite number, got {type(value).__name__}")


def admit_update(msg: Message, fingerprint: str, schema: AdapterSchema, extra_uploads: tuple[str, ...]) -> ClientUpdate:
    """A train reply as the update the rule aggregates: its delta, weight and extra uploads, each validated."""
    with _refusing_malformed():
        admit_reply(msg, fingerprint, (ARRAYS, *extra_uploads))
        records = msg.content.array_records
        largest = schema.nbytes + ARRAY_HEADER_BYTES * len(schema.wire_keys())
        for name in (ARRAYS, *extra_uploads):
            if name not in records:
                raise UpdateRejected(f"training reply carries no '{name}' record")
            if records[name].count_bytes() > largest:
                raise UpdateRejected(f"record '{name}' is {records[name].count_bytes()} bytes, more than the "
                                     f"{largest} the adapter schema allows; refused before decoding")
        try:
            delta = decode_adapter(records[ARRAYS], schema)
            extras = {name: decode_adapter(records[name], schema) for name in extra_uploads}
        except AdapterValidationError as error:
            raise UpdateRejected(f"malformed adapter delta: {error}") from error
        return ClientUpdate(client_name(msg), delta, float(msg.content[METRICS][NUM_EXAMPLES]), extras)


def admit_key_reply(msg: Message, fingerprint: str, roster: Roster, name: str, server_round: int) -> str | None:
    """Secure sum, stage 1: a reply must also carry this client's two public keys and the names of at most
    ``MAX_METRICS`` metrics it will sum; under a ``roster``, its identity and signature of the keys for session
    ``name``. Returns the identity's fingerprint (None without a roster)."""
    with _refusing_malformed():
        admit_reply(msg, fingerprint, (PUBLIC_KEYS, METRIC_NAMES))
        keys = msg.content.config_records.get(PUBLIC_KEYS)
        if keys is None or any(not isinstance(keys.get(name), bytes) or len(keys[name]) != PUBLIC_KEY_BYTES
                               for name in (ENCRYPTION_KEY, MASK_KEY, SEED_COMMITMENT)):
            raise UpdateRejected(f"secure-aggregation reply lacks two {PUBLIC_KEY_BYTES}-byte public keys and a "
                                 f"{PUBLIC_KEY_BYTES}-byte seed commitment")
        record = msg.content.config_records.get(METRIC_NAMES)
        names = record.get("names") if record is not None else None
        if not isinstance(names, list) or len(names) > MAX_METRICS or len(record) != 1 or any(
                not isinstance(name, str) or len(name) > MAX_TEXT_CHARS for name in names):
            raise UpdateRejected(f"secure-aggregation reply lacks a list of at most {MAX_METRICS} metric names "
                                 f"of at most {MAX_TEXT_CHARS} characters")
        if not roster:
            return None
        statement = keys_statement(name, server_round, msg.metadata.src_node_id, keys[ENCRYPTION_KEY], keys[MASK_KEY],
                                   keys[SEED_COMMITMENT])
        try:
            return roster.admit(keys.get(IDENTITY), keys.get(KEY_SIGNATURE), statement)
        except SecAggError as reason:
            raise UpdateRejected(f"secure-aggregation keys not signed by a roster device: {reason}") from None


Refusals = list[tuple[Message, str]]  # each refused reply with the reason


def admit_updates(replies: Iterable[Message], fingerprint: str, schema: AdapterSchema, extra_uploads: tuple[str, ...]
                  ) -> tuple[list[tuple[Message, ClientUpdate]], Refusals]:
    """A plain round's train replies, in client-name order (so a round does not depend on arrival order): the
    admitted ones with their updates, and the refused ones with the reason."""
    admitted, refused = [], []
    for msg in sorted(replies, key=client_order):
        try:
            admitted.append((msg, admit_update(msg, fingerprint, schema, extra_uploads)))
        except UpdateRejected as reason:
            refused.append((msg, str(reason)))
    return admitted, refused


def admit_evaluations(replies: Iterable[Message], fingerprint: str) -> tuple[list[Message], Refusals]:
    """A plain round's evaluation replies, in client-name order: the admitted ones and the refused ones."""
    admitted, refused = [], []
    for msg in sorted(replies, key=client_order):
        try:
            admit_reply(msg, fingerprint)
            admitted.append(msg)
        except UpdateRejected as reason:
            refused.append((msg, str(reason)))
    return admitted, refused


def admit_key_replies(replies: Iterable[Message], fingerprint: str, roster: Roster, name: str, server_round: int
                      ) -> tuple[dict[int, Message], Refusals]:
    """A secure sum's stage-1 replies (by node) that carry a valid base fingerprint, public keys and metric names,
    and under a roster keys signed for session ``name`` by a roster device not yet admitted; and the refused ones."""
    admitted, identities, refused = {}, set(), []
    for msg in sorted(replies, key=client_order):
        try:
            identity = admit_key_reply(msg, fingerprint, roster, name, server_round)
            if identity is not None and identity in identities:
                raise UpdateRejected(f"identity {identity[:16]} signed the keys of another node this round")
        except UpdateRejected as reason:
            refused.append((msg, str(reason)))
            continue
        identities.add(identity)
        admitted[msg.metadata.src_node_id] = msg
    return admitted, refused


def client_order(msg: Message) -> tuple[str, int]:
    """Replies are taken in the order of their client names (then nodes), never in arrival order."""
    return client_name(msg), msg.metadata.src_node_id
