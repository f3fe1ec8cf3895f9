"""The personal model a client keeps on the device and evaluates beside the global one.

- ``global``: the client uses the global adapter (with ``lora-aggregation fedsa``, the
  global A with its own B, which the ClientApp keeps as the ``personal`` state).
- ``ditto`` (Li et al., 2021): a second, whole adapter trained every round on the same
  local data with (lambda/2)||w - w_global||^2 pulling it toward the received global
  adapter; it lives in the state store and never leaves the device.
- ``finetune``: before each evaluation, ``personal-steps`` local steps on top of the
  received global adapter; nothing is kept.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from stamen.shared.adapters import adapter_state, load_adapter_state
from stamen.shared.config import RunConfig, TrainingSpec
from stamen.shared.examples import Example
from stamen.shared.metrics import PERSONAL_TRAIN_SECONDS
from stamen.shared.training import TrainResult, train_adapter

from .drift_correction import proximal_term
from .hooks import TrainingHook, TrainingRound
from .state_store import ClientStateStore

DITTO = "ditto"  # the state-store name of Ditto's personal adapter


def personal_training(config: RunConfig) -> TrainingSpec:
    """The local training of the personal model: ``personal-steps`` (or ``local-steps``) steps."""
    return replace(config.training, local_steps=config.personal.steps or config.training.local_steps)


def train_ditto(
    model, tokenizer, store: ClientStateStore, server_round: int, global_adapter: dict[str, np.ndarray],
    examples: list[Example], config: RunConfig, seed: int,
) -> TrainResult:
    """One round of Ditto's personal objective, starting from the adapter kept last round
    (the global one on a client's first round); the result is saved as of ``server_round``."""
    start = store.load(DITTO, before_round=server_round) or global_adapter
    load_adapter_state(model, start)
    result = train_adapter(model, tokenizer, examples, personal_training(config), seed,
                           (proximal_term(config.personal.ditto_lambda, global_adapter),))
    store.save(DITTO, server_round, {name: value.numpy() for name, value in adapter_state(model).items()})
    return result


class Ditto(TrainingHook):
    """``personalisation = ditto``: after the global round, a round of the personal adapter on the same data."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> Ditto | None:
        return cls() if training_round.config.personal.method == "ditto" else None

    def after_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        result = train_ditto(setup.runtime.model, setup.runtime.base.tokenizer, setup.store, setup.server_round,
                             setup.global_adapter, list(setup.data.train), setup.config, training_round.seed + 1)
        if result.seconds:
            training_round.metrics[PERSONAL_TRAIN_SECONDS.name] = result.seconds


def load_personal(
    model, tokenizer, store: ClientStateStore, server_round: int, examples: list[Example], config: RunConfig, seed: int,
) -> bool:
    """Put this client's personal model into ``model`` (which holds the global adapter) for evaluation;
    False when it has none distinct from the global one."""
    if config.personal.method == "ditto":
        personal = store.load(DITTO, before_round=server_round + 1)
        if personal is None:
            return False
        load_adapter_state(model, personal)
        return True
    if config.personal.method == "finetune":
        train_adapter(model, tokenizer, examples, personal_training(config), seed)
        return True
    return False
