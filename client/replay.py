"""Forgetting protection on the device: what a round replays, and keeping it for the next.

Sources (``replay``, combinable; each round mixes every chosen source's examples
into ``replay-ratio`` of every batch):

- ``buffer``: a reservoir of the device's own earlier training examples
  (:mod:`.replay_buffer`), so new local data does not erase older local data;
- ``anchor``: the general-domain set the server sends once per run, checked
  against the hash in the run config (:mod:`stamen.shared.anchor_set`);
- ``self``: pseudo-examples the frozen base writes itself (:mod:`.self_replay`);
- ``ewc``: no examples mixed in; a penalty holding the adapter near the received one,
  weighted by the Fisher information of the reservoir's examples (:mod:`.ewc`).

Everything stays in the client's state store; nothing here is sent to the server.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field

from flwr.app import ConfigRecord

from stamen.shared.adapters import adapter_parameters
from stamen.shared.anchor_set import ANCHOR, anchor_blob, decode_anchor, encode_anchor
from stamen.shared.config import RunConfig
from stamen.shared.examples import Example
from stamen.shared.training import GradientCorrection

from .ewc import ewc_penalty, fisher_diagonal
from .hooks import TrainingHook, TrainingRound
from .replay_buffer import ReservoirBuffer
from .self_replay import self_replay_examples
from .state_store import ClientStateStore

ANCHOR_DOCUMENT = "anchor-set"


class AnchorSetMissingError(RuntimeError):
    """Anchor replay is on but this device holds no verified copy of the run's anchor set."""


@dataclass
class RoundReplay:
    """The replay of one round: examples mixed into batches, gradient corrections, and their cost."""

    examples: list[Example] = field(default_factory=list)
    corrections: tuple[GradientCorrection, ...] = ()
    buffer: ReservoirBuffer | None = None
    seconds: float = 0.0

    def remember(self, store: ClientStateStore, server_round: int, trained_on: list[Example]) -> None:
        """Add this round's training data to the reservoir and save it as of ``server_round``."""
        started = time.perf_counter()
        if self.buffer:
            self.buffer.add(trained_on)
            self.buffer.save(store, server_round)
        self.seconds += time.perf_counter() - started


def round_replay(
    config: RunConfig, store: ClientStateStore, server_round: int, client_name: str, model, tokenizer,
    anchor: ConfigRecord | None = None,
) -> RoundReplay:
    """What ``server_round`` replays, built from the state saved before it (``model`` holds the received adapter)."""
    started = time.perf_counter()
    spec, sources = config.replay, config.replay.enabled()
    replay = RoundReplay()
    if "buffer" in sources or "ewc" in sources:
        seed = zlib.crc32(f"replay/{client_name}".encode())
        replay.buffer = ReservoirBuffer.load(store, server_round, spec.buffer_size, spec.buffer_bytes, seed)
    if "buffer" in sources:
        replay.examples += replay.buffer.items
    if "anchor" in sources:
        replay.examples += anchor_examples(store, server_round, spec.anchor_sha256, anchor)
    if "self" in sources:
        replay.examples += self_replay_examples(model, tokenizer, store, server_round, client_name,
                                                spec.self_size, spec.self_refresh)
    if "ewc" in sources and replay.buffer.items and spec.ewc_lambda > 0:
        training = config.training
        fisher = fisher_diagonal(model, tokenizer, list(replay.buffer.items), training.max_seq_len, training.batch_size)
        received = {name: p.detach().clone() for name, p in adapter_parameters(model).items()}
        replay.corrections = (ewc_penalty(spec.ewc_lambda, fisher, received),)
    replay.seconds = time.perf_counter() - started
    return replay


class Replay(TrainingHook):
    """Forgetting protection (``replay`` not ``none``): mix the round's replay into the batches, remember its data."""

    @classmethod
    def start(cls, training_round: TrainingRound) -> Replay | None:
        return cls() if training_round.config.replay.enabled() else None

    def before_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        self.replay = round_replay(setup.config, setup.store, setup.server_round, setup.data.name, setup.runtime.model,
                                   setup.runtime.base.tokenizer, training_round.msg.content.config_records.get(ANCHOR))
        training_round.corrections.extend(self.replay.corrections)
        training_round.replay_examples.extend(self.replay.examples)

    def after_training(self, training_round: TrainingRound) -> None:
        setup = training_round.setup
        self.replay.remember(setup.store, setup.server_round, list(setup.data.train))
        training_round.metrics.update({"replay-seconds": self.replay.seconds,
                                       "replay-examples": len(self.replay.examples)})


def anchor_examples(
    store: ClientStateStore, server_round: int, expected_sha256: str, record: ConfigRecord | None
) -> list[Example]:
    """The run's anchor set: verified from the message that carries it (and kept), else from the store."""
    if record is not None:
        pairs = decode_anchor(anchor_blob(record), expected_sha256)
        store.save_document(ANCHOR_DOCUMENT, server_round, {"sha256": expected_sha256, "examples": pairs})
    else:
        kept = store.load_document(ANCHOR_DOCUMENT, server_round + 1)
        if kept is None or kept["sha256"] != expected_sha256:
            raise AnchorSetMissingError(f"replay = anchor, but this device holds no anchor set with sha256 "
                                        f"{expected_sha256[:12]}; the server sends it with a node's first instruction")
        pairs = decode_anchor(encode_anchor([tuple(pair) for pair in kept["examples"]]), expected_sha256)
    return [Example(response, prompt) for prompt, response in pairs]
