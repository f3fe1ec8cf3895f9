"""The fold: how a round's admitted replies become the next global adapter, in the clear or as a secure sum.

A plain round folds each admitted update through the weight cap (:mod:`~stamen.server.weight_cap`),
then every installed :mod:`extension <stamen.server.extensions>` (in order), then the
:mod:`rule <stamen.server.rules>`. A secure round folds one decoded sum: its total weight is checked
against what honest clients can send (the cap's counterpart), then the rule takes the sum. Either way
the extensions account and the rule moves the global adapter, which is kept only if every value is
finite; the :class:`FoldOutcome` says what the round's rows show.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from flwr.app import Message, MetricRecord

from stamen.shared.config import PrivacySpec
from stamen.shared.protocol import METRICS, array_bytes
from stamen.shared.wire import AdapterSchema

from .admission import Refusals
from .extensions import RoundOutcome, ServerExtension
from .reply_metrics import client_metrics, initial_losses, initial_means, mean_metrics
from .rules import AggregationRule, ClientUpdate
from .secure_aggregation import SecureSum
from .weight_cap import SecureSumOutOfBounds, check_secure_total, round_weight_cap

log = logging.getLogger(__name__)
Arrays = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class FoldOutcome:
    """What a train round came to, as its rows show it."""

    replies: list[Message]  # every train reply, errors included
    accepted: list[tuple[Message, dict[str, Any]]]  # each reply in the aggregate, with its row's columns
    refused: Refusals  # each reply left out, with the reason
    metrics: MetricRecord  # the accepted replies' mean metrics
    initial: dict[str, float]  # their round-0 losses
    bytes_up_per_client: int
    extension_metrics: dict[str, Any]
    refused_aggregate: str = ""  # why the global adapter did not move, where updates arrived
    dropped: Refusals = dataclasses.field(default_factory=list)  # replied, then left the secure round before its sum


class RoundFold:
    """The global adapter, the rule and the extensions: the server state a round moves and a checkpoint keeps."""

    def __init__(self, global_adapter: Arrays, schema: AdapterSchema, rule: AggregationRule,
                 extensions: Sequence[ServerExtension] = (), privacy: PrivacySpec = PrivacySpec(),
                 max_client_weight: float = 0.0) -> None:
        """``privacy`` says how a secure sum is decoded and bounded; ``max_client_weight`` caps a plain round's
        example counts (see :mod:`~stamen.server.weight_cap`)."""
        self.global_adapter = {k: v.astype(np.float32) for k, v in global_adapter.items()}
        self.schema, self.rule, self.extensions = schema, rule, tuple(extensions)
        self.privacy, self.max_client_weight = privacy, max_client_weight

    def state_dict(self) -> dict[str, np.ndarray]:
        """Everything besides the global adapter that a checkpoint must keep: the rule's and the extensions' state."""
        state = self.rule.state_dict()
        for extension in self.extensions:
            state.update(extension.state_dict())
        return state

    def restore(self, global_adapter: Arrays, state: dict[str, np.ndarray]) -> None:
        self.global_adapter = global_adapter
        self.rule.load_state_dict(state)
        for extension in self.extensions:
            extension.load_state_dict(state)

    def fold_updates(self, server_round: int, num_nodes: int, replies: list[Message],
                     admitted: list[tuple[Message, ClientUpdate]], refused: Refusals) -> FoldOutcome:
        """A plain round: the admitted updates folded in, in the order given (cap, extensions, rule)."""
        self._start(server_round, num_nodes, replies)
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
            accepted.append((msg, {**client_metrics(msg), "weight": update.weight, "weight_capped": capped,
                                   "bytes_up": array_bytes(msg.content)}))
        contents = [msg.content for msg, _ in accepted]
        return self._finish(server_round, replies, accepted, refused, mean_metrics(contents) or MetricRecord(),
                            initial_losses([content[METRICS] for content in contents]),
                            self.schema.nbytes * (1 + len(self.rule.extra_uploads)))

    def fold_sum(self, server_round: int, num_nodes: int, replies: list[Message], admitted: dict[int, Message],
                 refused: Refusals, secure: SecureSum) -> FoldOutcome:
        """A secure round: the survivors' sum folded in, unless the sum was aborted or its total weight is out of
        bounds by more than the codec's tolerance (then no client's update is in the aggregate)."""
        self._start(server_round, num_nodes, replies)
        means, refusal = self._add_sum(server_round, secure)
        accepted, dropped, in_refused_sum = [], [], []
        for node, msg in admitted.items():
            if node not in secure.survivors:
                dropped.append((msg, "dropped out of the secure round"))
            elif refusal:
                in_refused_sum.append((msg, refusal))
            else:
                accepted.append((msg, {"bytes_up": secure.survivors[node]}))  # no metrics: none of one client's
        noise_share = math.sqrt(len(secure.survivors) / max(len(admitted), 1))  # dropped clients took their shares
        accepted.sort(key=lambda pair: pair[0].metadata.src_node_id)
        outcome = self._finish(server_round, replies, accepted, [*refused, *in_refused_sum], MetricRecord(means),
                               initial_means(means), max(secure.survivors.values(), default=0), noise_share, refusal)
        return dataclasses.replace(outcome, dropped=dropped)

    def _start(self, server_round: int, num_nodes: int, replies: list[Message]) -> None:
        self.rule.start_round(server_round, num_nodes)
        for extension in self.extensions:
            extension.start_round(server_round, self.global_adapter, replies)

    def _add_sum(self, server_round: int, secure: SecureSum) -> tuple[dict[str, float], str]:
        """The survivors' metric means, and why the sum was refused if it was."""
        if secure.total is None:
            return {}, "secure round aborted"
        uploads = self.rule.extra_uploads
        weighted_sum, extra_sums, total_weight, means = secure.parts(self.schema.num_values, len(uploads))
        try:
            check_secure_total(total_weight, len(secure.survivors), self.privacy, secure.tolerance)
        except SecureSumOutOfBounds as reason:
            log.warning("round %d: %s", server_round, reason)
            return {}, str(reason)
        extras = {name: self.schema.unflatten(values) for name, values in zip(uploads, extra_sums, strict=True)}
        self.rule.add_sum(self.schema.unflatten(weighted_sum), total_weight, len(secure.survivors), extras)
        return means, ""

    def _finish(self, server_round: int, replies: list[Message], accepted: list[tuple[Message, dict[str, Any]]],
                refused: Refusals, metrics: MetricRecord, initial: dict[str, float], bytes_up: int,
                noise_share: float = 1.0, refusal: str = "") -> FoldOutcome:
        """Move the global adapter if any update was folded in; let the extensions account."""
        outcome = RoundOutcome(server_round, self.rule, replies, [msg.content for msg, _ in accepted], noise_share)
        if self.rule.count:
            for extension in self.extensions:
                extension.finish_round(outcome)
            moved = self.rule.finish_round(self.global_adapter)
            if all(np.isfinite(value).all() for value in moved.values()):
                self.global_adapter = moved
            else:
                refusal = "the aggregate has NaN/Inf values"
                log.error("round %d: %s; the global adapter is unchanged", server_round, refusal)
        else:
            log.warning("round %d: no valid update; the global adapter is unchanged", server_round)
        extension_metrics = {k: v for extension in self.extensions for k, v in extension.round_metrics(outcome).items()}
        return FoldOutcome(replies, accepted, refused, metrics, initial, bytes_up if self.rule.count else 0,
                           extension_metrics, refusal)
