"""What a round needs on the server besides the rule: extensions, in the rules' shape.

The round samples nodes, admits replies and folds them into the rule. Every other
server concern of a round (the privacy engine, the exact-LoRA residual, the anchor
set's distribution, a simulation's attack tally) is an extension the run installs;
the strategy and the fold (:mod:`~stamen.server.fold`) call each installed one at the same points of a
round, in order:

    configure (train / evaluate messages) -> start_round -> add (each accepted update)
    -> finish_round (updates arrived: before the rule moves the global adapter) -> round_metrics

and checkpoints what ``state_dict`` returns beside the rule's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from flwr.app import Message, RecordDict

from .rules import AggregationRule, ClientUpdate


@dataclass(frozen=True)
class RoundOutcome:
    """What a train round came to, as extensions see it at its end."""

    server_round: int
    rule: AggregationRule  # its ``count``: updates folded in this round
    replies: list[Message]  # every train reply, errors included
    accepted: list[RecordDict]  # the contents of the admitted ones
    noise_share: float = 1.0  # share of the configured DP noise the release carried (secure rounds lose dropouts')


class ServerExtension:
    """One server concern of a round; every method does nothing unless the extension needs it."""

    def configure(self, messages: list[Message], phase: str) -> list[Message]:
        """The round's ``train`` or ``evaluate`` messages, with what this extension sends added."""
        return messages

    def downloads(self, phase: str) -> dict[str, dict[str, np.ndarray]]:
        """Arrays every sampled node receives beside the global adapter (by record name)."""
        return {}

    def start_round(self, server_round: int, global_adapter: Mapping[str, np.ndarray], replies: list[Message]) -> None:
        """The train replies have arrived; nothing has been folded in yet."""

    def add(self, update: ClientUpdate) -> ClientUpdate:
        """An admitted update on its way into the rule; the rule gets what this returns."""
        return update

    def finish_round(self, outcome: RoundOutcome) -> None:
        """Updates arrived; the rule holds them all and has not yet moved the global adapter."""

    def round_metrics(self, outcome: RoundOutcome) -> dict[str, Any]:
        """Columns this extension adds to the round's row in ``metrics.jsonl``."""
        return {}

    def state_dict(self) -> dict[str, np.ndarray]:
        """What a checkpoint keeps (names unique across extensions and the rule)."""
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        """Restore from a checkpoint's state (which holds every extension's and the rule's names)."""
