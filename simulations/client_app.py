"""The ClientApp a simulation runs: Stamen's, dealt its partition and with the run's attack installed.

Flower gives each virtual node a ``partition-id`` and ``num-partitions`` in its node
config; the node's data is that partition of the run's dataset, the embedded corpus by default (a node with
a ``data-path`` reads its own file as a device does). Attacks exist only here: the
production ClientApp (``stamen.client.app``) has none.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.clientapp.typing import Mod

from stamen.client.error_feedback import ErrorFeedback
from stamen.client.handlers import TRAINING_HOOKS, StamenClient, client_app_with
from stamen.client.hooks import TrainingHook, TrainingRound
from stamen.client.local_data import MAX_HELDOUT, LocalData, device_source
from stamen.client.round_setup import RoundSetup
from stamen.shared.config import RunConfig
from stamen.shared.metrics import MALICIOUS

from .attacks import Attack, attack_for, make_attack
from .partitions import client_datasets, heldout_stages, stage_examples, stream_stage


def partition_source(context: Context, config: RunConfig, server_round: int) -> LocalData:
    """A virtual node's partition of the run's dataset in ``server_round`` (a stream: its stage so far)."""
    node = context.node_config
    if "partition-id" not in node or "num-partitions" not in node:
        return device_source(context, config, server_round)
    data = config.data
    mine = client_datasets(int(node["num-partitions"]), config.seed, data)[int(node["partition-id"])]
    if data.partition not in ("stream", "topic-shift") or server_round == 0:
        return LocalData(mine.name, mine.train, mine.heldout)
    stage = stream_stage(server_round, config.num_rounds, data.stream_stages)
    stages = tuple(stage_examples(mine.train, j, data.stream_stages)[:MAX_HELDOUT] for j in range(stage + 1))
    train = stage_examples(mine.train, stage, data.stream_stages)
    return LocalData(mine.name, train, mine.heldout, stage, stages, heldout_stages(mine, stage, data))


class AttackHook(TrainingHook):
    """A malicious node's round: its data poisoned before training, its update after (before error feedback)."""

    def __init__(self, attack: Attack, seed: int) -> None:
        self.attack, self.rng = attack, np.random.default_rng(seed)

    @classmethod
    def start(cls, training_round: TrainingRound) -> AttackHook | None:
        attack = attack_for(training_round.context, training_round.config)
        return cls(attack, training_round.seed) if attack else None

    def before_training(self, training_round: TrainingRound) -> None:
        training_round.examples = self.attack.poison_data(training_round.examples, self.rng)

    def after_training(self, training_round: TrainingRound) -> None:
        training_round.delta = self.attack.poison_update(training_round.delta, self.rng)
        training_round.metrics[MALICIOUS.name] = 1  # bookkeeping, to count admitted attacks


def attack_probe(setup: RoundSetup, context: Context) -> dict[str, int | float]:
    """The run's attack success on the global adapter, measured by every client (honest ones too)."""
    config = setup.config
    if config.attack.name == "none":
        return {}
    probe = make_attack(config.attack.name, **config.attack.settings())
    metrics = probe.measure(setup.runtime.model, setup.runtime.base.tokenizer, setup.data.heldout)
    return {**metrics, **({MALICIOUS.name: 1} if attack_for(context, config) else {})}


def with_attack(hooks: tuple[type[TrainingHook], ...]) -> tuple[type[TrainingHook], ...]:
    """``hooks`` with the attack just before error feedback, which must round what is really sent."""
    at = hooks.index(ErrorFeedback)
    return (*hooks[:at], AttackHook, *hooks[at:])


SIMULATED_CLIENT = StamenClient(partition_source, with_attack(TRAINING_HOOKS), (attack_probe,))


def simulated_client_app(
    mods: list[Mod], train_handler: Callable[[Message, Context], Message] | None = None
) -> ClientApp:
    """The simulation's ClientApp with Flower ``mods`` around every handler (``train_handler``: see
    :func:`stamen.client.handlers.client_app_with`)."""
    return client_app_with(mods, train_handler, SIMULATED_CLIENT)


app = simulated_client_app([])
