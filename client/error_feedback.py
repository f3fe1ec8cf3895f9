"""Error feedback for lossy uploads: what the wire dropped from one update joins the next.

Without it an 8-bit upload loses ~1% of every update for good; with it the dropped part is
kept on the device (never sent) and added to the next delta, so over rounds the server
receives the full sum of the client's updates (Seide et al. 2014; Karimireddy et al. 2019).
"""

from __future__ import annotations

import numpy as np

from stamen.shared.wire import LOSSY_WIRE_DTYPES, as_received

from .hooks import TrainingHook, TrainingRound
from .state_store import ClientStateStore

RESIDUAL = "wire-residual"


def with_error_feedback(
    delta: dict[str, np.ndarray], wire_dtype: str, store: ClientStateStore, server_round: int
) -> dict[str, np.ndarray]:
    """The update to send: ``delta`` plus the residual the last lossy upload left behind.
    Stores the residual this upload leaves. A lossless wire dtype returns ``delta`` as it is."""
    if wire_dtype not in LOSSY_WIRE_DTYPES:
        return delta
    residual = store.load(RESIDUAL, server_round) or {}
    target = {name: value + residual.get(name, 0.0) for name, value in delta.items()}
    received = as_received(target, wire_dtype)
    store.save(RESIDUAL, server_round, {name: target[name] - received[name] for name in target})
    return target


class ErrorFeedback(TrainingHook):
    """The last hook: the delta as it leaves, with the last upload's rounding residual; not under
    secure aggregation, whose masked sum is exact."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> ErrorFeedback | None:
        return None if training_round.config.privacy.secure_aggregation else cls()

    def after_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        training_round.delta = with_error_feedback(training_round.delta, training_round.config.wire_dtype,
                                                   setup.store, setup.server_round)
