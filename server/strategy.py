"""Flower's strategy, as Stamen uses it: which nodes a round asks, and the messages they get.

``FedAvg`` samples the nodes (with Python's seeded ``random``, which the checkpoint keeps) and
builds the messages; this subclass adds what the rule and the installed extensions send beside the
global adapter and lets each extension adjust the messages (the privacy engine samples among them).
Aggregation is not Flower's here: the round loop (:mod:`~stamen.server.federated_round`) admits
the replies and folds them (:mod:`~stamen.server.fold`), so the aggregate methods refuse to run.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from stamen.shared.wire import encode_adapter

from .extensions import ServerExtension
from .rules import AggregationRule


class AdapterStrategy(FedAvg):
    """Node sampling and round messages, with the rule's and the extensions' downloads."""

    def __init__(self, rule: AggregationRule, extensions: Sequence[ServerExtension], wire_dtype: str,
                 **fedavg_options: Any) -> None:
        super().__init__(**fedavg_options)
        self.rule, self.extensions, self.wire_dtype = rule, tuple(extensions), wire_dtype

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._add_downloads(messages, {**self.rule.downloads(), **self._extension_downloads("train")})
        return self._configure(messages, "train")

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        messages = list(super().configure_evaluate(server_round, arrays, config, grid))
        self._add_downloads(messages, self._extension_downloads("evaluate"))
        return self._configure(messages, "evaluate")

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, None]:
        raise NotImplementedError("Stamen admits and folds replies in stamen.server.federated_round, not here")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        raise NotImplementedError("Stamen admits and averages replies in stamen.server.federated_round, not here")

    def _extension_downloads(self, phase: str) -> dict[str, dict[str, np.ndarray]]:
        return {name: arrays for extension in self.extensions for name, arrays in extension.downloads(phase).items()}

    def _configure(self, messages: list[Message], phase: str) -> list[Message]:
        for extension in self.extensions:
            messages = extension.configure(messages, phase)
        return messages

    def _add_downloads(self, messages: list[Message], downloads: dict[str, dict[str, np.ndarray]]) -> None:
        if messages:  # Flower's messages share one RecordDict: extra records are added once
            for name, arrays in downloads.items():
                messages[0].content[name] = encode_adapter(arrays, self.wire_dtype)
