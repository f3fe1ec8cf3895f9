"""What an aggregation rule is: fold client updates in one at a time, then move the global adapter.

A rule sees validated updates only (the strategy rejects bad ones first). Its
server-side state (moments, control variates, ...) lives on the rule and goes into
the checkpoint through ``state_dict`` / ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from stamen.shared.config import ConfigError, RunConfig
from stamen.shared.plugins import Plugin

from ..accumulator import WeightedMean

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClientUpdate:
    """One accepted client reply: its adapter delta, weight, and any rule-specific extras."""

    client: str
    delta: Mapping[str, np.ndarray]
    weight: float
    extras: Mapping[str, Mapping[str, np.ndarray]] = field(default_factory=dict)


class AggregationRule(Plugin):
    """Example-weighted mean of deltas, applied by ``step``. Subclasses override what differs."""

    kind = "rule"
    needs_individual_updates: ClassVar[bool] = False  # secure aggregation yields only sums
    extra_uploads: ClassVar[tuple[str, ...]] = ()  # extra ArrayRecords clients send (shared.protocol.rule_uploads)
    needs_root_update: ClassVar[bool] = False  # the server trains on its own root set each round (FLTrust)
    plain_mean: ClassVar[bool] = False  # the new global adapter is the plain weighted mean (exact LoRA corrects it)

    @classmethod
    def check_fits(cls, config: RunConfig) -> None:
        """Refuse a run this rule cannot serve, saying why: config validation asks the rule's declarations."""
        privacy, uploads = config.privacy, list(cls.extra_uploads)
        if (privacy.secure_aggregation or privacy.dp != "none") and cls.needs_individual_updates:
            what = "secure aggregation yields only the sum of updates" if privacy.secure_aggregation else \
                "differential privacy bounds each client's effect on a mean, which this rule does not compute"
            fitting = _rules_that(lambda r: r.takes_sums() and (privacy.dp == "none" or not r.extra_uploads))
            raise ConfigError(f"aggregation '{cls.name}' needs each client's update, but {what}; "
                              f"use a mean-based rule ({', '.join(fitting)})")
        if privacy.dp != "none" and uploads:
            raise ConfigError(f"aggregation '{cls.name}' uploads {uploads} besides the delta, "
                              f"which differential privacy would leave unprotected")
        if config.adapter.lora_mode().corrects_products and not cls.plain_mean:
            raise ConfigError(f"lora-aggregation {config.adapter.aggregation} corrects the plain mean of B*A, "
                              f"so it needs aggregation "
                              f"{' or '.join(_rules_that(lambda r: r.plain_mean))}, not {cls.name}")
        if uploads and any(rank < config.adapter.rank for rank in config.simulated_client_ranks()):
            raise ConfigError(f"client-ranks cannot be combined with aggregation '{cls.name}': its {uploads} "
                              f"are kept at one rank")

    @classmethod
    def takes_sums(cls) -> bool:
        """Whether a secure sum (or a noised one) can feed this rule."""
        return not cls.needs_individual_updates

    def __init__(self, **options: float) -> None:
        super().__init__(**options)
        self._mean = WeightedMean()

    def initialise(self, global_adapter: Arrays) -> None:
        """Set up server state for a new run (not called when resuming from a checkpoint)."""

    def start_round(self, server_round: int, num_clients: int) -> None:
        self._mean = WeightedMean()

    def add(self, update: ClientUpdate) -> None:
        self._mean.add(update.delta, update.weight)

    def add_sum(self, weighted_sum: Arrays, total_weight: float, count: int,
                extras: Mapping[str, Arrays] | None = None) -> None:
        """Fold in a sum of ``count`` updates the rule never saw one by one (secure aggregation), with the sums of
        its ``extra_uploads``, weighted like the deltas."""
        if self.needs_individual_updates:
            raise TypeError(f"rule '{self.name}' needs individual updates and cannot take a sum")
        self._mean.add_sum(weighted_sum, total_weight, count)

    @property
    def count(self) -> int:
        return self._mean.count

    def finish_round(self, global_adapter: Arrays) -> Arrays:
        """The new global adapter (called only when at least one update was added)."""
        return self.step(global_adapter, self._mean.mean())

    def step(self, global_adapter: Arrays, mean_delta: Arrays) -> Arrays:
        return {k: global_adapter[k] + mean_delta[k] for k in global_adapter}

    def set_root_update(self, root_delta: Arrays) -> None:
        """The server's own update this round, for rules with ``needs_root_update``."""

    def chosen_clients(self) -> set[str] | None:
        """Clients whose update alone made the last result (Krum), or None when every added update counts."""
        return None

    def downloads(self) -> dict[str, Arrays]:
        """Extra ArrayRecords sent to clients with the global adapter (e.g. control variates)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""


def _rules_that(declares) -> list[str]:
    from .registry import RULES

    return sorted(name for name, rule in RULES.items() if declares(rule))
