"""Which private examples this client trains and evaluates on.

A deployed device names its own file or folder with ``data-path`` in its node config.
Where the examples come from is the app's :data:`DataSource`: a simulation installs
one that deals out the embedded corpus instead (``stamen.simulations.client_app``).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from stamen.shared.config import RunConfig
from stamen.shared.device_data import read_examples
from stamen.shared.examples import Example

MAX_HELDOUT = 16  # as many held-out examples as a simulated client keeps


@dataclass(frozen=True)
class LocalData:
    name: str
    train: tuple[Example, ...]  # what this round trains on
    heldout: tuple[Example, ...]
    stage: int | None = None  # a data stream's stage this round trains, if the data arrives in stages
    stages: tuple[tuple[Example, ...], ...] = ()  # up to MAX_HELDOUT examples of every stage so far
    heldout_stages: tuple[tuple[Example, ...], ...] = ()  # the held-out examples of each stage so far, where the
    # stages differ in kind (topic-shift): the current stage's and the earlier ones' losses are reported apart


DataSource = Callable[[Context, RunConfig, int], LocalData]
"""The data of the node running a context in a round (0: before the first round)."""


def device_source(context: Context, config: RunConfig, server_round: int) -> LocalData:
    """A deployed device's data: the node config's ``data-path``."""
    node = context.node_config
    if "data-path" not in node:
        raise ValueError("this node has no local data: give a device 'data-path' in its node config")
    path = Path(str(node["data-path"])).expanduser()
    return device_data(path, str(node.get("client-name", path.stem)), config.seed)


def device_data(path: Path, name: str, seed: int) -> LocalData:
    """A device's examples, a fifth of them (at most 16) held out, chosen by the run's seed."""
    examples = read_examples(path)
    random.Random(seed).shuffle(examples)
    held = min(MAX_HELDOUT, len(examples) // 5)
    return LocalData(name, tuple(examples[held:]), tuple(examples[:held]))
