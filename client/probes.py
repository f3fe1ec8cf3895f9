"""The losses a client measures: its held-out data, the general (base-domain) probe, the base alone."""

from __future__ import annotations

from stamen.shared.adapters import base_alone
from stamen.shared.config import TrainingSpec
from stamen.shared.examples import Example
from stamen.shared.protocol import HELDOUT_EXAMPLES

from .evaluation import EvalResult, evaluate_loss
from .hooks import TrainingHook, TrainingRound
from .local_data import LocalData
from .runtime import ClientRuntime


def loss_on(runtime: ClientRuntime, examples, training: TrainingSpec) -> EvalResult:
    """The model's loss on ``examples`` as it stands (global or personal adapter)."""
    return evaluate_loss(
        runtime.model, runtime.base.tokenizer, list(examples), training.max_seq_len, training.eval_batch_size
    )


def general_examples(runtime: ClientRuntime, data: LocalData) -> list[Example]:
    """The forgetting probe: the general-domain set and what the base itself answers to general prompts."""
    return [*data.base_domain, *runtime.base_generated()]


def base_alone_loss(runtime: ClientRuntime, examples: list[Example], training: TrainingSpec) -> float:
    """Loss of the frozen base with every adapter disabled: what the base could do (round 0)."""
    with base_alone(runtime.model):
        return loss_on(runtime, examples, training).loss


class RoundZeroBaseline(TrainingHook):
    """Losses of the initial global adapter, measured once (round 1) as the run's round-0 baseline;
    a run that never evaluates skips it."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> RoundZeroBaseline | None:
        config = training_round.config
        return cls() if training_round.setup.server_round == 1 and config.fraction_evaluate > 0 else None

    def before_training(self, training_round: TrainingRound) -> None:
        runtime, data = training_round.setup.runtime, training_round.setup.data
        training = training_round.config.training
        training_round.metrics.update({
            HELDOUT_EXAMPLES: len(data.heldout),
            "initial-heldout-loss": loss_on(runtime, data.heldout, training).loss,
            "initial-base-domain-loss": loss_on(runtime, general_examples(runtime, data), training).loss,
        })
