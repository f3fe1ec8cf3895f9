"""Forgetting protection on the device: what a round replays, and keeping it for the next.

Sources (``replay``, combinable; each round mixes every chosen source's examples
into ``replay-ratio`` of every batch) are registered in :mod:`.sources`:
``buffer`` (:mod:`.buffer`), ``anchor`` (:mod:`.anchor`), ``self``
(:mod:`.self_replay`), ``ewc`` (:mod:`.ewc`). They run in the order of
:data:`~stamen.shared.config.REPLAY_SOURCES`. ``replay-loss = distill`` scores the replayed rows by
the frozen base's next-token distribution instead of their text (:mod:`stamen.shared.distillation`).

Everything stays in the client's state store; nothing here is sent to the server.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

from flwr.app import ConfigRecord

from stamen.shared.anchor_set import ANCHOR
from stamen.shared.config import REPLAY_SOURCES, RunConfig
from stamen.shared.distillation import Distillation
from stamen.shared.examples import Example
from stamen.shared.metrics import DISTILL_KL, REPLAY_EXAMPLES, REPLAY_SECONDS
from stamen.shared.training import GradientCorrection

from ..hooks import TrainingHook, TrainingRound
from ..state_store import ClientStateStore
from .buffer import ReplayBuffer
from .coreset import k_centre_selection
from .sources import REPLAY_SOURCE_CLASSES, ReplayInputs


@dataclass
class RoundReplay:
    """The replay of one round: examples mixed into batches, gradient corrections, and their cost."""

    examples: list[Example] = field(default_factory=list)
    corrections: tuple[GradientCorrection, ...] = ()
    buffer: ReplayBuffer | None = None
    seconds: float = 0.0
    costs: dict[str, float] = field(default_factory=dict)  # one-time costs inside ``seconds`` (a set written once)

    def remember(self, store: ClientStateStore, server_round: int, trained_on: list[Example]) -> None:
        """Add this round's training data to the buffer and save it as of ``server_round``."""
        started = time.perf_counter()
        if self.buffer:
            self.buffer.add(trained_on)
            self.buffer.save(store, server_round)
        self.seconds += time.perf_counter() - started


def round_replay(
    config: RunConfig, store: ClientStateStore, server_round: int, client_name: str, model, tokenizer,
    anchor: ConfigRecord | None = None, base_identity: str = "",
) -> RoundReplay:
    """What ``server_round`` replays, built from the state saved before it (``model`` holds the received adapter;
    ``base_identity`` names the base, for what a source caches per base)."""
    started = time.perf_counter()
    chosen = config.replay.enabled()
    sources = [REPLAY_SOURCE_CLASSES[name] for name in REPLAY_SOURCES if name in chosen]
    replay = RoundReplay()
    if any(source.uses_buffer for source in sources):
        seed = zlib.crc32(f"replay/{client_name}".encode())
        select = k_centre_selection(model, tokenizer) if config.replay.buffer_selection == "k-centre" else None
        replay.buffer = ReplayBuffer.load(store, server_round, config.replay.buffer_size, config.replay.buffer_bytes,
                                          seed, select)
    inputs = ReplayInputs(config, store, server_round, client_name, model, tokenizer, anchor, replay.buffer,
                          base_identity, replay.costs)
    for source in sources:
        examples, corrections = source.replay(inputs)
        replay.examples += examples
        replay.corrections += corrections
    replay.seconds = time.perf_counter() - started
    return replay


class Replay(TrainingHook):
    """Forgetting protection (``replay`` not ``none``): mix the round's replay into the batches, remember its data."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> Replay | None:
        return cls() if training_round.config.replay.enabled() else None

    def before_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        base = setup.runtime.base
        self.replay = round_replay(setup.config, setup.store, setup.server_round, setup.data.name, setup.runtime.model,
                                   base.tokenizer, training_round.msg.content.config_records.get(ANCHOR),
                                   f"{base.fingerprint}/{base.quantisation.mode}")
        training_round.corrections.extend(self.replay.corrections)
        training_round.replay_examples.extend(self.replay.examples)
        spec = setup.config.replay
        if spec.loss == "distill":
            training_round.distillation = Distillation(spec.distill_weight, spec.distill_temperature)

    def after_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        self.replay.remember(setup.store, setup.server_round, list(setup.data.train))
        training_round.metrics.update({REPLAY_SECONDS.name: self.replay.seconds,
                                       REPLAY_EXAMPLES.name: len(self.replay.examples), **self.replay.costs})
        if training_round.result.distill_kl is not None:
            training_round.metrics[DISTILL_KL.name] = training_round.result.distill_kl
