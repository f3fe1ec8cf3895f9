"""The interface of everything a client's train round does besides training: hooks around ``train_adapter``.

A hook class is one concern (FedProx, SCAFFOLD, replay, Ditto, optimiser state, error
feedback, ...). For each train message the ClientApp asks every installed hook class to
``start`` on the round (``None``: it does not apply), calls ``before_training`` on each in
order, trains, then calls ``after_training`` on each in order. Hooks read and extend the
one :class:`TrainingRound`, which is all a round's state.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Context, Message

from stamen.shared.config import RunConfig
from stamen.shared.distillation import Distillation
from stamen.shared.examples import Example
from stamen.shared.training import GradientCorrection, TrainResult

from .round_setup import RoundSetup


@dataclass
class TrainingRound:
    """One train message's working state: what trains, how, and what goes back."""

    msg: Message
    context: Context
    setup: RoundSetup
    examples: tuple[Example, ...]  # what trains this round (an attack in simulation may swap them)
    seed: int
    corrections: list[GradientCorrection] = field(default_factory=list)
    replay_examples: list[Example] = field(default_factory=list)
    distillation: Distillation | None = None  # replayed rows scored by the base's distribution, not their text
    optimizer_state: dict[str, np.ndarray] | None = None
    result: TrainResult | None = None  # set by training
    trained: dict[str, np.ndarray] = field(default_factory=dict)  # the whole adapter after training
    delta: dict[str, np.ndarray] = field(default_factory=dict)  # the shared part's update, as it will be sent
    uploads: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # extra arrays for the reply, by record
    metrics: dict[str, int | float] = field(default_factory=dict)  # extra metrics for the reply

    @classmethod
    def begin(cls, msg: Message, context: Context, setup: RoundSetup) -> TrainingRound:
        seed = zlib.crc32(f"{setup.config.seed}/{setup.data.name}/{setup.server_round}".encode())
        return cls(msg, context, setup, setup.data.train, seed)

    @property
    def config(self) -> RunConfig:
        return self.setup.config


class TrainingHook:
    """One concern of a train round. A new instance serves each round, so it may keep
    what its ``before_training`` learnt for its ``after_training``."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> TrainingHook | None:
        """This hook for ``training_round``, or ``None`` where the run does not use it."""
        return cls()

    def before_training(self, training_round: TrainingRound) -> None:
        """Add corrections, replay examples or optimiser state; measure what must be measured first."""

    def after_training(self, training_round: TrainingRound) -> None:
        """Save device state, change the delta, add uploads and metrics."""


EvaluationProbe = Callable[[RoundSetup, Context], dict[str, int | float]]
"""Extra metrics an evaluate reply carries, measured on the global adapter (a simulation's attack success)."""
