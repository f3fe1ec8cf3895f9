"""The layout of Stamen's Flower messages, in one place for both sides.

Server → client (train and evaluate): ``arrays`` (the global adapter, wire dtype)
and ``config`` (the flat run config, the server round and the base fingerprint).
Client → server: ``arrays`` (train only: the adapter delta), ``metrics`` (numbers,
``num-examples`` first) and ``client`` (base fingerprint and client name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from .anchor_set import ANCHOR
from .config import RunConfig
from .metrics import BASELINE_WEIGHT, WEIGHT, undeclared

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
CLIENT_INFO = "client"
CORRECTIONS = "corrections"  # exact LoRA: per-layer corrections C, sent down
CONTROL = "control"  # SCAFFOLD: the server's control variate, sent down
CONTROL_DELTA = "control-delta"  # SCAFFOLD: a client's control-variate change, sent up
FINGERPRINT = "base-fingerprint"
SERVER_ROUND = "server-round"
CLIENT_NAME = "client-name"
NUM_EXAMPLES = WEIGHT.name
HELDOUT_EXAMPLES = BASELINE_WEIGHT.name
SCAFFOLD = "scaffold"  # the rule whose clients keep control variates (server/rules/scaffold.py)


class UnexpectedRecords(ValueError):
    """A server message carrying records the run's config does not call for: nothing of it is acted on."""


def rule_uploads(config: RunConfig) -> tuple[str, ...]:
    """Records a train reply carries beside the delta, by the run's rule (under secure aggregation they are summed
    with it): SCAFFOLD's control-variate change."""
    return (CONTROL_DELTA,) if config.aggregation == SCAFFOLD else ()


def server_records(config: RunConfig, message_type: str) -> frozenset[str]:
    """Records a train or evaluate message may carry under ``config``. A device switches its hooks on from the
    config, never from a record, and refuses a message with any other record."""
    records = {ARRAYS, CONFIG}
    if config.adapter.lora_mode().corrects_products:
        records.add(CORRECTIONS)
    if message_type == MessageType.TRAIN:
        if config.aggregation == SCAFFOLD:
            records.add(CONTROL)
        if "anchor" in config.replay.enabled():
            records.add(ANCHOR)
    return frozenset(records)


def check_server_records(content: RecordDict, config: RunConfig, message_type: str) -> None:
    """Raise :class:`UnexpectedRecords` if ``content`` carries a record ``config`` does not call for."""
    unexpected = sorted(set(content) - server_records(config, message_type))
    if unexpected:
        raise UnexpectedRecords(f"the server's {message_type} message carries records the run's config does not "
                                f"call for: {[name[:40] for name in unexpected[:5]]}; nothing of it is acted on")


def round_config(config: RunConfig, fingerprint: str) -> ConfigRecord:
    """The ConfigRecord the server sends with every train/evaluate instruction."""
    return ConfigRecord({**config.to_flat(), FINGERPRINT: fingerprint})


@dataclass(frozen=True)
class Instruction:
    """What a client reads from a server message."""

    config: RunConfig
    fingerprint: str
    server_round: int


def read_instruction(content: RecordDict) -> Instruction:
    """Parse a server message's config record (protocol keys are separated out)."""
    record = content[CONFIG]
    config = RunConfig.from_flat(dict(record), ignore=(FINGERPRINT, SERVER_ROUND))
    return Instruction(config, str(record[FINGERPRINT]), int(record.get(SERVER_ROUND, 0)))


def client_reply(
    metrics: Mapping[str, float | int], fingerprint: str, client_name: str, delta: ArrayRecord | None = None
) -> RecordDict:
    """A client's reply; ``delta`` is present for training replies only. Every metric must be declared in
    :mod:`stamen.shared.metrics` (a metric no reader knows would pass unseen)."""
    unknown = undeclared(metrics)
    if unknown:
        raise ValueError(f"metrics {unknown} are declared nowhere: add each to stamen/shared/metrics.py")
    records: dict = {
        METRICS: MetricRecord(dict(metrics)),
        CLIENT_INFO: ConfigRecord({FINGERPRINT: fingerprint, CLIENT_NAME: client_name}),
    }
    if delta is not None:
        records[ARRAYS] = delta
    return RecordDict(records)


def array_bytes(content: RecordDict) -> int:
    """The bytes of a message's arrays (an update, a download): what ``bytes_up`` / ``bytes_down`` count."""
    return sum(record.count_bytes() for record in content.array_records.values())


def record_bytes(record: ArrayRecord | ConfigRecord | MetricRecord) -> int:
    """The bytes a record takes as Flower counts them (payload and keys), for any record a client chose: Flower's
    ``count_bytes`` raises on an empty list or an empty string."""
    if isinstance(record, ArrayRecord):
        return record.count_bytes()
    total = 0
    for key, value in record.items():
        items = value if isinstance(value, list) else [value]
        total += len(key) + sum(len(item) if isinstance(item, str | bytes) else 1 if isinstance(item, bool) else 8
                                for item in items)
    return total
