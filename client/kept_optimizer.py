"""``keep-optimizer-state``: AdamW's moments carried from one of this device's rounds to its next."""

from __future__ import annotations

from .hooks import TrainingHook, TrainingRound
from .state_store import OPTIMIZER


class KeptOptimizerState(TrainingHook):
    """Start the round's optimiser from the moments the last round saved; save this round's."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> KeptOptimizerState | None:
        return cls() if training_round.config.keep_optimizer_state else None

    def before_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        training_round.optimizer_state = setup.store.load(OPTIMIZER, setup.server_round)

    def after_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        setup.store.save(OPTIMIZER, setup.server_round, training_round.result.optimizer_state)
