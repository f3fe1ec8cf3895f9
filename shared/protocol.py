"""The layout of Stamen's Flower messages, in one place for both sides.

Server → client (train and evaluate): ``arrays`` (the global adapter, wire dtype)
and ``config`` (the flat run config, the server round and the base fingerprint).
Client → server: ``arrays`` (train only: the adapter delta), ``metrics`` (numbers,
``num-examples`` first) and ``client`` (base fingerprint and client name).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from .config import RunConfig

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
NUM_EXAMPLES = "num-examples"
HELDOUT_EXAMPLES = "heldout-examples"  # weight of round-1 baseline losses
INITIAL_PREFIX = "initial-"  # metrics of the initial global adapter, reported in round 1


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
    """A client's reply; ``delta`` is present for training replies only."""
    records: dict = {
        METRICS: MetricRecord(dict(metrics)),
        CLIENT_INFO: ConfigRecord({FINGERPRINT: fingerprint, CLIENT_NAME: client_name}),
    }
    if delta is not None:
        records[ARRAYS] = delta
    return RecordDict(records)
