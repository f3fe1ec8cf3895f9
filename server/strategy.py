"""Adapter-delta aggregation on Flower's Message-API strategy.

Flower's ``FedAvg`` samples nodes and builds messages; this subclass replaces
aggregation: every reply is admitted (:mod:`~stamen.server.admission`) before the
configured :mod:`rule <stamen.server.rules>` sees it; a bad reply is logged and dropped while
the round goes on. Accepted replies are folded into the rule one at a time, in client-name order,
so a round's result does not depend on the order replies arrived in. Everything else a round
needs on the server (privacy, exact-LoRA residual, anchor set, ...) is an installed
:mod:`extension <stamen.server.extensions>`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from stamen.shared.config import PrivacySpec
from stamen.shared.protocol import HELDOUT_EXAMPLES, INITIAL_PREFIX, METRICS
from stamen.shared.secagg_identity import Roster
from stamen.shared.secagg_protocol import read_sum
from stamen.shared.secure_metrics import metric_means
from stamen.shared.wire import AdapterSchema, encode_adapter

from .admission import UpdateRejected, admit_key_reply, admit_reply, admit_update, client_name
from .extensions import RoundOutcome, ServerExtension
from .influence import SecureSumOutOfBounds, check_secure_total, round_weight_cap
from .rules import AggregationRule
from .run_record import RunRecorder
from .secure_aggregation import SecureSum

log = logging.getLogger(__name__)


class AdapterStrategy(FedAvg):
    """Validated adapter deltas, aggregated by a pluggable rule."""

    def __init__(
        self,
        global_adapter: dict[str, np.ndarray],
        schema: AdapterSchema,
        fingerprint: str,
        recorder: RunRecorder,
        rule: AggregationRule,
        extensions: Sequence[ServerExtension] = (),
        privacy: PrivacySpec = PrivacySpec(),
        max_client_weight: float = 0.0,
        **fedavg_options: Any,
    ) -> None:
        """``extensions`` run in order at each point of a round; ``privacy`` says how a secure sum is
        decoded (the DP engine itself is an extension; the rule was checked to fit the run);
        ``max_client_weight`` caps a plain round's example counts (see :mod:`~stamen.server.influence`)."""
        super().__init__(**fedavg_options)
        self.privacy, self.max_client_weight = privacy, max_client_weight
        self.extensions = tuple(extensions)
        self._num_sampled = self._rejected = 0
        self._refused_aggregate = ""  # why this round's aggregate was not applied, if it was not
        self._round_started = 0.0
        self._replies: list[Message] = []  # this round's train replies, errors included
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
        """Everything besides the global adapter that a checkpoint must keep: the rule's and the extensions' state."""
        state = self.rule.state_dict()
        for extension in self.extensions:
            state.update(extension.state_dict())
        return state

    def restore(self, global_adapter: dict[str, np.ndarray], state: dict[str, np.ndarray]) -> None:
        self.global_adapter = global_adapter
        self.rule.load_state_dict(state)
        for extension in self.extensions:
            extension.load_state_dict(state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._num_nodes = len(list(grid.get_node_ids()))
        self._add_downloads(messages, {**self.rule.downloads(), **self._extension_downloads("train")})
        if messages:
            self._bytes_down = sum(r.count_bytes() for r in messages[0].content.array_records.values())
        messages = self._configure(messages, "train")  # an extension may sample among them (DP)
        self._num_sampled = len(messages)
        return messages

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._add_downloads(messages, self._extension_downloads("evaluate"))
        return self._configure(messages, "evaluate")

    def _extension_downloads(self, phase: str) -> dict[str, dict[str, np.ndarray]]:
        return {name: arrays for extension in self.extensions for name, arrays in extension.downloads(phase).items()}

    def _configure(self, messages: list[Message], phase: str) -> list[Message]:
        for extension in self.extensions:
            messages = extension.configure(messages, phase)
        return messages

    def _add_downloads(self, messages: list[Message], downloads: dict[str, dict[str, np.ndarray]]) -> None:
        if messages:  # Flower's messages share one RecordDict: extra records are added once
            for name, arrays in downloads.items():
                messages[0].content[name] = encode_adapter(arrays, self.schema.wire_dtype)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = self._start_round(server_round, replies)
        admitted = []
        for msg in sorted(replies, key=_client_order):
            try:
                admitted.append((msg, admit_update(msg, self.fingerprint, self.schema, self.rule.extra_uploads)))
            except UpdateRejected as reason:
                self._reject(self._row(msg, "train", server_round), str(reason))
        cap = round_weight_cap([update.weight for _, update in admitted], self.max_client_weight)
        accepted = []
        for msg, update in admitted:
            capped = update.weight > cap
            if capped:
                log.warning("round %d: %s reported %g examples; it weighs as %g (the round's weight cap)",
                            server_round, update.client, update.weight, cap)
                update = dataclasses.replace(update, weight=cap)
            for extension in self.extensions:
                update = extension.add(update)
            self.rule.add(update)
            accepted.append(msg.content)
            self.recorder.write({**self._row(msg, "train", server_round), **self._describe(msg), "accepted": True,
                                 "weight": update.weight, "weight_capped": capped, "bytes_up": _bytes(msg),
                                 "bytes_down": self._bytes_down})
        uploads = 1 + len(self.rule.extra_uploads)
        metrics = _mean_metrics(accepted, self.weighted_by_key) or MetricRecord()
        initial = _initial_losses([content[METRICS] for content in accepted])
        self._finish_train(server_round, accepted, self.schema.nbytes * uploads, metrics, initial)
        return self.global_record(), metrics

    def admit_key_replies(self, server_round: int, replies: Iterable[Message], message_type: str, name: str
                          ) -> dict[int, Message]:
        """Secure sum, stage 1: the replies (by node) that carry a valid base fingerprint, public keys and
        metric names, and under a roster keys signed for session ``name`` by a roster device not yet admitted.
        A train round starts here."""
        phase = "train" if message_type == MessageType.TRAIN else "evaluate"
        replies = self._start_round(server_round, replies) if phase == "train" else list(replies)
        admitted, identities = {}, set()
        roster = Roster(self.privacy.secagg_roster)
        for msg in sorted(replies, key=_client_order):
            try:
                identity = admit_key_reply(msg, self.fingerprint, roster, name, server_round)
                if identity is not None and identity in identities:
                    raise UpdateRejected(f"identity {identity[:16]} signed the keys of another node this round")
            except UpdateRejected as reason:
                self._reject(self._row(msg, phase, server_round), str(reason))
                continue
            identities.add(identity)
            admitted[msg.metadata.src_node_id] = msg
        return admitted

    def aggregate_secure_sum(self, server_round: int, admitted: dict[int, Message], secure: SecureSum) -> None:
        """Secure round, end: fold the unmasked sum of the survivors into the rule.

        An aborted sum leaves the global adapter as it was; so does one whose total weight is out of
        bounds (by more than the codec's tolerance)."""
        refusal = "secure round aborted" if secure.total is None else None
        means: dict[str, float] = {}
        if secure.total is not None:
            uploads = self.rule.extra_uploads
            weighted_sum, extra_sums, total_weight, slots = read_sum(secure.total, secure.value_range,
                                                                     self.schema.num_values, len(uploads))
            try:
                check_secure_total(total_weight, len(secure.survivors), self.privacy, secure.tolerance)
            except SecureSumOutOfBounds as reason:
                log.warning("round %d: %s", server_round, reason)
                refusal = self._refused_aggregate = str(reason)
            else:
                extras = {name: self.schema.unflatten(values) for name, values in zip(uploads, extra_sums, strict=True)}
                self.rule.add_sum(self.schema.unflatten(weighted_sum), total_weight, len(secure.survivors), extras)
                means = metric_means(slots, secure.metric_names, total_weight, secure.tolerance)
        accepted = self._secure_rows(server_round, "train", admitted, secure, refusal)
        per_client = max(secure.survivors.values(), default=0)
        noise_share = math.sqrt(len(secure.survivors) / max(len(admitted), 1))  # dropped clients took their shares
        initial = {_snake(k): v for k, v in means.items() if k.startswith(INITIAL_PREFIX)}
        self._finish_train(server_round, accepted, per_client, MetricRecord(means), initial, noise_share)

    def aggregate_secure_evaluation(self, server_round: int, admitted: dict[int, Message], secure: SecureSum) -> None:
        """Secure evaluation, end: the weighted metric means of the survivors, never one client's."""
        means: dict[str, float] = {}
        if secure.total is not None:
            _, _, total_weight, slots = read_sum(secure.total, secure.value_range, 0)
            means = metric_means(slots, secure.metric_names, total_weight, secure.tolerance)
        self._secure_rows(server_round, "evaluate", admitted, secure,
                          "secure evaluation aborted" if secure.total is None else None)
        self._finish_evaluation(server_round, MetricRecord(means) if means else None, len(secure.survivors))

    def _secure_rows(
        self, server_round: int, phase: str, admitted: dict[int, Message], secure: SecureSum, refusal: str | None
    ) -> list[RecordDict]:
        """One row per admitted client (no metrics: the server has none of one client's); the survivors' contents."""
        for node, msg in admitted.items():
            row = self._row(msg, phase, server_round)
            if node in secure.survivors and refusal is None:
                traffic = {"bytes_up": secure.survivors[node], "bytes_down": self._bytes_down}
                self.recorder.write({**row, "client": client_name(msg), "accepted": True,
                                     **(traffic if phase == "train" else {})})
            else:
                self._reject(row, refusal or f"dropped out of the secure {'round' if phase == 'train' else phase}")
        return [admitted[node].content for node in sorted(secure.survivors)] if refusal is None else []

    def _start_round(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Reset the round's counters on the first train replies; returns them as a list."""
        self._round_started, self._rejected, self._refused_aggregate = time.perf_counter(), 0, ""
        self.rule.start_round(server_round, self._num_nodes)
        replies = list(replies)
        self._replies = replies
        for extension in self.extensions:
            extension.start_round(server_round, self.global_adapter, replies)
        return replies

    def _finish_train(
        self, server_round: int, accepted: list[RecordDict], bytes_up: int, metrics: MetricRecord,
        initial: dict[str, float], noise_share: float = 1.0,
    ) -> None:
        """Move the global adapter if any update arrived, let the extensions account, and keep the round's
        summary with the clients' mean ``metrics`` and ``initial`` (round-0) losses."""
        outcome = RoundOutcome(server_round, self.rule, self._replies, accepted, noise_share)
        if self.rule.count:
            for extension in self.extensions:
                extension.finish_round(outcome)
            moved = self.rule.finish_round(self.global_adapter)
            if all(np.isfinite(value).all() for value in moved.values()):
                self.global_adapter = moved
            else:
                self._refused_aggregate = "the aggregate has NaN/Inf values"
                log.error("round %d: %s; the global adapter is unchanged", server_round, self._refused_aggregate)
        else:
            log.warning("round %d: no valid update; the global adapter is unchanged", server_round)
        extension_metrics = {k: v for extension in self.extensions for k, v in extension.round_metrics(outcome).items()}
        traffic = {
            "clients_sampled": self._num_sampled,
            "clients_replied": len(self._replies),
            "clients_without_reply": self._num_sampled - len(self._replies),
            "clients_rejected": self._rejected,
            "bytes_in": bytes_up * self.rule.count,
            "bytes_out": self._bytes_down * self._num_sampled,
            "aggregation_seconds": round(time.perf_counter() - self._round_started, 4),
        }
        log.info("round %d: %d sampled, %d replied, %d without reply, %d rejected, %d aggregated; "
                 "%d bytes in, %d bytes out; aggregation %.3f s", server_round, traffic["clients_sampled"],
                 traffic["clients_replied"], traffic["clients_without_reply"], traffic["clients_rejected"],
                 self.rule.count, traffic["bytes_in"], traffic["bytes_out"], traffic["aggregation_seconds"])
        self._train_summary = {
            **traffic,
            "clients_accepted": self.rule.count,
            **({"aggregate_refused": self._refused_aggregate} if self._refused_aggregate else {}),
            "bytes_up_per_client": bytes_up if self.rule.count else 0,
            "bytes_down_per_client": self._bytes_down,
            **{f"train_{_snake(k)}": v for k, v in metrics.items() if not k.startswith(INITIAL_PREFIX)},
            **initial,
            **extension_metrics,
        }

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        accepted = []
        for msg in replies:
            row = self._row(msg, "evaluate", server_round)
            try:
                admit_reply(msg, self.fingerprint)
            except UpdateRejected as reason:
                self._reject(row, str(reason))
                continue
            accepted.append(msg.content)
            self.recorder.write({**row, **self._describe(msg), "accepted": True})
        metrics = _mean_metrics(accepted, self.weighted_by_key)
        self._finish_evaluation(server_round, metrics, len(accepted))
        return metrics

    def skip_evaluation(self, server_round: int) -> None:
        """A round without evaluation (``evaluate-every``) still writes its row."""
        self._finish_evaluation(server_round, None, 0)

    def _finish_evaluation(self, server_round: int, metrics: MetricRecord | None, evaluated: int) -> None:
        """Write the round's row: its train summary and the mean evaluation ``metrics`` of ``evaluated`` clients."""
        means = {f"eval_{_snake(k)}": v for k, v in (metrics or {}).items()}
        summary = {"kind": "round", "round": server_round, **self._train_summary, "clients_evaluated": evaluated,
                   **means}
        self.recorder.write(summary)
        log.info(
            "round %d: held-out loss %s, general-text loss %s, retention %s, %d clients trained, %d evaluated, "
            "%d bytes up per client",
            server_round,
            _shown(summary.get("eval_heldout_loss"), ".4f"),
            _shown(summary.get("eval_general_text_loss"), ".4f"),
            _shown(summary.get("eval_retention"), ".0%"),
            summary.get("clients_accepted", 0),
            evaluated,
            summary.get("bytes_up_per_client", 0),
        )

    def _row(self, msg: Message, phase: str, server_round: int) -> dict[str, Any]:
        return {"kind": "client", "phase": phase, "round": server_round, "node": msg.metadata.src_node_id}

    def _describe(self, msg: Message) -> dict[str, Any]:
        metrics = {_snake(k): v for k, v in msg.content[METRICS].items()}
        return {"client": client_name(msg), **metrics}

    def _reject(self, row: dict[str, Any], reason: str) -> None:
        self._rejected += row["phase"] == "train"
        log.warning("round %d: rejected %s reply from node %s: %s", row["round"], row["phase"], row["node"], reason)
        self.recorder.write({**row, "accepted": False, "reason": reason})


def _mean_metrics(accepted: list[RecordDict], weighted_by_key: str) -> MetricRecord | None:
    """The weighted mean of the accepted replies' ``metrics`` records (Flower's, given only those records)."""
    if not accepted:
        return None
    return aggregate_metricrecords([RecordDict({METRICS: content[METRICS]}) for content in accepted], weighted_by_key)


def _client_order(msg: Message) -> tuple[str, int]:
    return client_name(msg), msg.metadata.src_node_id


def _bytes(msg: Message) -> int:
    return sum(record.count_bytes() for record in msg.content.array_records.values())


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
        _snake(k): sum(float(m[HELDOUT_EXAMPLES]) * float(m[k]) for m in reporting if k in m) / total
        for k in sorted(keys)
    }


def _shown(value: float | None, form: str) -> str:
    return "n/a" if value is None else format(value, form)
