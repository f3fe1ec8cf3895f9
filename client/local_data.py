"""Which private examples this client trains and evaluates on.

In a simulation, Flower gives each virtual node a ``partition-id`` in its node
config; the node's data is that partition of the embedded corpus. A deployed
device names its own file or folder with ``data-path`` in its node config.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from flwr.app import Context

from .data import Example
from .device_data import read_examples

MAX_HELDOUT = 16  # as many held-out examples as a simulated client keeps


@dataclass(frozen=True)
class LocalData:
    name: str
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    base_domain: tuple[Example, ...]  # general-domain texts no client trains on


def local_data(context: Context, seed: int) -> LocalData:
    """The data of the node running ``context``."""
    from stamen.simulations.corpus import natural_split

    node = context.node_config
    if "data-path" in node:
        path = Path(str(node["data-path"])).expanduser()
        return device_data(path, str(node.get("client-name", path.stem)), seed, natural_split(1, seed).base_domain)
    if "partition-id" in node and "num-partitions" in node:
        split = natural_split(int(node["num-partitions"]), seed)
        mine = split.clients[int(node["partition-id"])]
        return LocalData(mine.name, mine.train, mine.heldout, split.base_domain)
    raise ValueError("this node has no local data: give a device 'data-path' in its node config "
                     "(a simulated node gets 'partition-id' and 'num-partitions')")


def device_data(path: Path, name: str, seed: int, base_domain: tuple[Example, ...]) -> LocalData:
    """A device's examples, a fifth of them (at most 16) held out, chosen by the run's seed."""
    examples = read_examples(path)
    random.Random(seed).shuffle(examples)
    held = min(MAX_HELDOUT, len(examples) // 5)
    return LocalData(name, tuple(examples[held:]), tuple(examples[:held]), base_domain)
