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

from stamen.shared.config import RunConfig

from .data import Example
from .device_data import read_examples

MAX_HELDOUT = 16  # as many held-out examples as a simulated client keeps


@dataclass(frozen=True)
class LocalData:
    name: str
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    base_domain: tuple[Example, ...]  # general-domain texts no client trains on


def local_data(context: Context, config: RunConfig, server_round: int) -> LocalData:
    """The data of the node running ``context`` in ``server_round`` (0: evaluation only)."""
    from stamen.simulations.corpus import natural_split
    from stamen.simulations.partitions import split_corpus, stage_examples, stream_stage

    node = context.node_config
    if "data-path" in node:
        path = Path(str(node["data-path"])).expanduser()
        base_domain = natural_split(1, config.seed).base_domain
        return device_data(path, str(node.get("client-name", path.stem)), config.seed, base_domain)
    if "partition-id" in node and "num-partitions" in node:
        split = split_corpus(int(node["num-partitions"]), config.seed, config.partition, config.partition_alpha)
        mine = split.clients[int(node["partition-id"])]
        train = mine.train
        if config.partition == "stream" and server_round > 0:
            stage = stream_stage(server_round, config.num_rounds, config.stream_stages)
            train = stage_examples(train, stage, config.stream_stages)
        return LocalData(mine.name, train, mine.heldout, split.base_domain)
    raise ValueError("this node has no local data: give a device 'data-path' in its node config "
                     "(a simulated node gets 'partition-id' and 'num-partitions')")


def device_data(path: Path, name: str, seed: int, base_domain: tuple[Example, ...]) -> LocalData:
    """A device's examples, a fifth of them (at most 16) held out, chosen by the run's seed."""
    examples = read_examples(path)
    random.Random(seed).shuffle(examples)
    held = min(MAX_HELDOUT, len(examples) // 5)
    return LocalData(name, tuple(examples[held:]), tuple(examples[:held]), base_domain)
