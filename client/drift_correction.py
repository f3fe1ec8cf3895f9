"""Client halves of rules that correct local drift: FedProx's proximal term, SCAFFOLD's control variates.

Both act on the adapter's gradients after backward and before the optimiser step.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from stamen.shared.protocol import CONTROL, CONTROL_DELTA, SCAFFOLD
from stamen.shared.training import GradientCorrection
from stamen.shared.wire import decode_adapter

from .hooks import TrainingHook, TrainingRound
from .state_store import ClientStateStore


def proximal_term(mu: float, anchor: Mapping[str, np.ndarray]) -> GradientCorrection:
    """Gradient of (mu/2)||w - w_global||^2, added to every adapter gradient (FedProx)."""
    frozen = {k: torch.as_tensor(v) for k, v in anchor.items()}

    def correct(params: Mapping[str, torch.nn.Parameter]) -> None:
        for name, p in params.items():
            p.grad.add_(p.detach() - frozen[name].to(p.device, p.dtype), alpha=mu)

    return correct


class ScaffoldClient:
    """SCAFFOLD's client half for one round: correct gradients by (c - c_i), then update c_i.

    c comes from the server; c_i lives in this device's state store and never leaves it.
    """

    def __init__(self, store: ClientStateStore, server_round: int, server_control: Mapping[str, np.ndarray]) -> None:
        self.store = store
        self.server_round = server_round
        self.server = dict(server_control)
        self.own = store.load(CONTROL, server_round) or {k: np.zeros_like(v) for k, v in self.server.items()}

    def correction(self) -> GradientCorrection:
        shift = {k: torch.as_tensor(self.server[k] - self.own[k]) for k in self.server}

        def correct(params: Mapping[str, torch.nn.Parameter]) -> None:
            for name, p in params.items():
                p.grad.add_(shift[name].to(p.device, p.dtype))

        return correct

    def finish(
        self, global_adapter: Mapping[str, np.ndarray], trained: Mapping[str, np.ndarray], steps: int, lr: float
    ) -> dict[str, np.ndarray]:
        """Option II: c_i+ = c_i - c + (x - y_i) / (K * lr). Saves c_i+, returns c_i+ - c_i."""
        new = {
            k: (self.own[k] - self.server[k] + (global_adapter[k] - trained[k]) / (steps * lr)).astype(np.float32)
            for k in self.server
        }
        self.store.save(CONTROL, self.server_round, new)
        return {k: new[k] - self.own[k] for k in new}


class FedProx(TrainingHook):
    """FedProx (``proximal-mu`` > 0): every gradient pulled toward the received global adapter."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> FedProx | None:
        return cls() if training_round.config.proximal_mu > 0 else None

    def before_training(self, training_round: TrainingRound) -> None:
        training_round.corrections.append(proximal_term(training_round.config.proximal_mu,
                                                        training_round.setup.global_adapter))


class Scaffold(TrainingHook):
    """SCAFFOLD, where the run's rule is (never because a message carries a control variate): correct the
    gradients, upload c_i+ - c_i (summed with the delta under secure aggregation)."""

    def __init__(self, client: ScaffoldClient) -> None:
        self.client = client

    @classmethod
    def start(cls, training_round: TrainingRound) -> Scaffold | None:
        content, setup = training_round.msg.content, training_round.setup
        if training_round.config.aggregation != SCAFFOLD:
            return None
        if CONTROL not in content.array_records:
            raise ValueError("the run's rule is SCAFFOLD, but the server sent no control variate")
        server_control = decode_adapter(content[CONTROL], setup.runtime.schema)
        return cls(ScaffoldClient(setup.store, setup.server_round, server_control))

    def before_training(self, training_round: TrainingRound) -> None:
        training_round.corrections.append(self.client.correction())

    def after_training(self, training_round: TrainingRound) -> None:
        training = training_round.config.training
        training_round.uploads[CONTROL_DELTA] = self.client.finish(
            training_round.setup.global_adapter, training_round.trained, training.local_steps, training.learning_rate)
