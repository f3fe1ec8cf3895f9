"""FedAvg over adapter deltas, on Flower's Message-API strategy.

Flower's ``FedAvg`` samples nodes, builds messages and drives the rounds; this
subclass replaces aggregation: every reply is validated (base fingerprint,
adapter keys/shapes/dtype, finiteness, example count) before it is averaged,
a bad reply is logged and dropped while the round goes on, and the example-
weighted mean delta is added to the float32 global adapter the server keeps.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from stamen.shared.fingerprint import BaseMismatchError, check_same_base
from stamen.shared.protocol import (
    ARRAYS,
    CLIENT_INFO,
    CLIENT_NAME,
    FINGERPRINT,
    HELDOUT_EXAMPLES,
    INITIAL_PREFIX,
    METRICS,
    NUM_EXAMPLES,
)
from stamen.shared.wire import AdapterSchema, AdapterValidationError, decode_adapter, encode_adapter

from .accumulator import WeightedMean
from .run_record import RunRecorder

log = logging.getLogger(__name__)


class UpdateRejected(ValueError):
    """A client reply that must not reach aggregation; the message says why."""


class AdapterFedAvg(FedAvg):
    """Example-weighted FedAvg of validated adapter deltas."""

    def __init__(
        self,
        global_adapter: dict[str, np.ndarray],
        schema: AdapterSchema,
        fingerprint: str,
        recorder: RunRecorder,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(**fedavg_options)
        self.global_adapter = {k: v.astype(np.float32) for k, v in global_adapter.items()}
        self.schema = schema
        self.fingerprint = fingerprint
        self.recorder = recorder
        self._bytes_down = 0
        self._train_summary: dict[str, Any] = {}

    def global_record(self) -> ArrayRecord:
        """The global adapter in the wire dtype, as sent to clients."""
        return encode_adapter(self.global_adapter, self.schema.wire_dtype)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        self._bytes_down = arrays.count_bytes()
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        mean = WeightedMean()
        accepted = []
        for msg in replies:
            row = {"kind": "client", "phase": "train", "round": server_round, "node": msg.metadata.src_node_id}
            try:
                delta, weight = self._admit_update(msg)
            except UpdateRejected as reason:
                self._reject(row, str(reason))
                continue
            mean.add(delta, weight)
            accepted.append(msg.content)
            row.update(self._describe(msg), accepted=True, bytes_up=msg.content[ARRAYS].count_bytes())
            row["bytes_down"] = self._bytes_down
            self.recorder.write(row)
        if mean.count:
            for name, value in mean.mean().items():
                self.global_adapter[name] += value
        else:
            log.warning("round %d: no valid update; the global adapter is unchanged", server_round)
        metrics = aggregate_metricrecords(accepted, self.weighted_by_key) if accepted else MetricRecord()
        self._train_summary = {
            "clients_accepted": mean.count,
            "bytes_up_per_client": self.schema.nbytes if mean.count else 0,
            "bytes_down_per_client": self._bytes_down,
            **{f"train_{_snake(k)}": v for k, v in metrics.items() if not k.startswith(INITIAL_PREFIX)},
            **_initial_losses([content[METRICS] for content in accepted]),
        }
        return self.global_record(), metrics

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        accepted = []
        for msg in replies:
            row = {"kind": "client", "phase": "evaluate", "round": server_round, "node": msg.metadata.src_node_id}
            try:
                self._admit_reply(msg)
            except UpdateRejected as reason:
                self._reject(row, str(reason))
                continue
            accepted.append(msg.content)
            row.update(self._describe(msg), accepted=True)
            self.recorder.write(row)
        metrics = aggregate_metricrecords(accepted, self.weighted_by_key) if accepted else None
        evaluated = {f"eval_{_snake(k)}": v for k, v in (metrics or {}).items()}
        summary = {"kind": "round", "round": server_round, **self._train_summary, **evaluated}
        self.recorder.write(summary)
        log.info(
            "round %d: held-out loss %s, base-domain loss %s, %d clients, %d bytes up per client",
            server_round,
            summary.get("eval_heldout_loss", "n/a"),
            summary.get("eval_base_domain_loss", "n/a"),
            summary.get("clients_accepted", 0),
            summary.get("bytes_up_per_client", 0),
        )
        return metrics

    def _admit_reply(self, msg: Message) -> None:
        """Checks every reply must pass: no error, same base, a positive example count."""
        if msg.has_error():
            raise UpdateRejected(f"client reported an error: {msg.error.reason}")
        content = msg.content
        if CLIENT_INFO not in content.config_records or METRICS not in content.metric_records:
            raise UpdateRejected("reply lacks the client info or metrics record")
        try:
            check_same_base(self.fingerprint, str(content[CLIENT_INFO].get(FINGERPRINT, "")), "server vs client")
        except BaseMismatchError as error:
            raise UpdateRejected(str(error)) from error
        examples = content[METRICS].get(NUM_EXAMPLES)
        if not isinstance(examples, int | float) or not np.isfinite(examples) or examples <= 0:
            raise UpdateRejected(f"'{NUM_EXAMPLES}' must be a positive number, got {examples!r}")

    def _admit_update(self, msg: Message) -> tuple[dict[str, np.ndarray], float]:
        self._admit_reply(msg)
        if ARRAYS not in msg.content.array_records:
            raise UpdateRejected("training reply carries no adapter delta")
        try:
            delta = decode_adapter(msg.content[ARRAYS], self.schema)
        except AdapterValidationError as error:
            raise UpdateRejected(f"malformed adapter delta: {error}") from error
        return delta, float(msg.content[METRICS][NUM_EXAMPLES])

    def _describe(self, msg: Message) -> dict[str, Any]:
        metrics = {_snake(k): v for k, v in msg.content[METRICS].items()}
        return {"client": str(msg.content[CLIENT_INFO].get(CLIENT_NAME, "?")), **metrics}

    def _reject(self, row: dict[str, Any], reason: str) -> None:
        log.warning("round %d: rejected %s reply from node %s: %s", row["round"], row["phase"], row["node"], reason)
        self.recorder.write({**row, "accepted": False, "reason": reason})


def _snake(key: str) -> str:
    return key.replace("-", "_")


def _initial_losses(metrics: list[MetricRecord]) -> dict[str, float]:
    """Round-0 baseline: ``initial-*`` losses weighted by held-out size, as evaluation weights them."""
    reporting = [m for m in metrics if HELDOUT_EXAMPLES in m]
    total = sum(float(m[HELDOUT_EXAMPLES]) for m in reporting)
    if not total:
        return {}
    keys = {k for m in reporting for k in m if k.startswith(INITIAL_PREFIX)}
    return {
        _snake(k): sum(float(m[HELDOUT_EXAMPLES]) * float(m[k]) for m in reporting if k in m) / total for k in sorted(keys)
    }
