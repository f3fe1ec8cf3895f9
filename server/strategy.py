"""Adapter-delta aggregation on Flower's Message-API strategy.

Flower's ``FedAvg`` samples nodes and builds messages; this subclass replaces
aggregation: every reply is validated (base fingerprint, adapter keys/shapes/dtype,
finiteness, example count) before the configured :mod:`rule <stamen.server.rules>`
sees it; a bad reply is logged and dropped while the round goes on. Accepted
replies are folded into the rule one at a time, in client-name order, so a round's
result does not depend on the order replies arrived in.
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
    CORRECTIONS,
    FINGERPRINT,
    HELDOUT_EXAMPLES,
    INITIAL_PREFIX,
    METRICS,
    NUM_EXAMPLES,
)
from stamen.shared.wire import AdapterSchema, AdapterValidationError, decode_adapter, encode_adapter

from .lora_exact import ExactLoraResidual
from .rules import AggregationRule, ClientUpdate
from .run_record import RunRecorder

log = logging.getLogger(__name__)


class UpdateRejected(ValueError):
    """A client reply that must not reach aggregation; the message says why."""


class AdapterStrategy(FedAvg):
    """Validated adapter deltas, aggregated by a pluggable rule."""

    def __init__(
        self,
        global_adapter: dict[str, np.ndarray],
        schema: AdapterSchema,
        fingerprint: str,
        recorder: RunRecorder,
        rule: AggregationRule,
        residual: ExactLoraResidual | None = None,
        **fedavg_options: Any,
    ) -> None:
        super().__init__(**fedavg_options)
        self.residual = residual
        self.global_adapter = {k: v.astype(np.float32) for k, v in global_adapter.items()}
        self.schema = schema
        self.fingerprint = fingerprint
        self.recorder = recorder
        self.rule = rule
        self._bytes_down = 0
        self._num_nodes = 0
        self._train_summary: dict[str, Any] = {}

    def global_record(self) -> ArrayRecord:
        """The global adapter in the wire dtype, as sent to clients."""
        return encode_adapter(self.global_adapter, self.schema.wire_dtype)

    def server_state(self) -> dict[str, np.ndarray]:
        """Everything besides the global adapter that a checkpoint must keep."""
        corrections = self.residual.corrections if self.residual else {}
        return {**self.rule.state_dict(), **{f"{CORRECTIONS}/{k}": v for k, v in corrections.items()}}

    def restore(self, global_adapter: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        self.global_adapter = global_adapter
        self.rule.load_state_dict(state)
        if self.residual:
            prefix = f"{CORRECTIONS}/"
            self.residual.corrections = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._num_nodes = len(list(grid.get_node_ids()))
        self._add_downloads(messages, {**self.rule.downloads(), **self._corrections()})
        if messages:
            self._bytes_down = sum(r.count_bytes() for r in messages[0].content.array_records.values())
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._add_downloads(messages, self._corrections())
        return messages

    def _corrections(self) -> dict[str, dict[str, np.ndarray]]:
        return {CORRECTIONS: self.residual.corrections} if self.residual else {}

    def _add_downloads(self, messages: list[Message], downloads: dict[str, dict[str, np.ndarray]]) -> None:
        if messages:  # Flower's messages share one RecordDict: extra records are added once
            for name, arrays in downloads.items():
                messages[0].content[name] = encode_adapter(arrays, self.schema.wire_dtype)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        self.rule.start_round(server_round, self._num_nodes)
        if self.residual:
            self.residual.start_round(self.global_adapter)
        accepted = []
        for msg in sorted(replies, key=_client_order):
            row = {"kind": "client", "phase": "train", "round": server_round, "node": msg.metadata.src_node_id}
            try:
                update = self._admit_update(msg)
            except UpdateRejected as reason:
                self._reject(row, str(reason))
                continue
            self.rule.add(update)
            if self.residual:
                self.residual.add(update.delta, update.weight)
            accepted.append(msg.content)
            bytes_up = sum(record.count_bytes() for record in msg.content.array_records.values())
            self.recorder.write({**row, **self._describe(msg), "accepted": True, "bytes_up": bytes_up,
                                 "bytes_down": self._bytes_down})
        if self.rule.count:
            if self.residual:
                self.residual.finish_round()
            self.global_adapter = self.rule.finish_round(self.global_adapter)
        else:
            log.warning("round %d: no valid update; the global adapter is unchanged", server_round)
        metrics = aggregate_metricrecords(accepted, self.weighted_by_key) if accepted else MetricRecord()
        uploads = 1 + len(self.rule.extra_uploads)
        self._train_summary = {
            "clients_accepted": self.rule.count,
            "bytes_up_per_client": self.schema.nbytes * uploads if self.rule.count else 0,
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
            self.recorder.write({**row, **self._describe(msg), "accepted": True})
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

    def _admit_update(self, msg: Message) -> ClientUpdate:
        self._admit_reply(msg)
        records = msg.content.array_records
        for name in (ARRAYS, *self.rule.extra_uploads):
            if name not in records:
                raise UpdateRejected(f"training reply carries no '{name}' record")
        try:
            delta = decode_adapter(records[ARRAYS], self.schema)
            extras = {name: decode_adapter(records[name], self.schema) for name in self.rule.extra_uploads}
        except AdapterValidationError as error:
            raise UpdateRejected(f"malformed adapter delta: {error}") from error
        return ClientUpdate(_client_name(msg), delta, float(msg.content[METRICS][NUM_EXAMPLES]), extras)

    def _describe(self, msg: Message) -> dict[str, Any]:
        metrics = {_snake(k): v for k, v in msg.content[METRICS].items()}
        return {"client": _client_name(msg), **metrics}

    def _reject(self, row: dict[str, Any], reason: str) -> None:
        log.warning("round %d: rejected %s reply from node %s: %s", row["round"], row["phase"], row["node"], reason)
        self.recorder.write({**row, "accepted": False, "reason": reason})


def _client_name(msg: Message) -> str:
    if msg.has_error() or CLIENT_INFO not in msg.content.config_records:
        return "?"
    return str(msg.content[CLIENT_INFO].get(CLIENT_NAME, "?"))


def _client_order(msg: Message) -> tuple[str, int]:
    return _client_name(msg), msg.metadata.src_node_id


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
