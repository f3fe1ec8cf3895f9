"""Which private examples this client trains and evaluates on.

In a simulation, Flower gives each virtual node a ``partition-id`` in its node
config; the node's data is that partition of the embedded corpus.
"""

from __future__ import annotations

from dataclasses import dataclass

from flwr.app import Context

from .data import Example


@dataclass(frozen=True)
class LocalData:
    name: str
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]
    base_domain: tuple[Example, ...]  # general-domain texts no client trains on


def local_data(context: Context, seed: int) -> LocalData:
    """The data of the node running ``context``."""
    node = context.node_config
    if "partition-id" in node and "num-partitions" in node:
        from stamen.simulations.corpus import natural_split

        split = natural_split(int(node["num-partitions"]), seed)
        mine = split.clients[int(node["partition-id"])]
        return LocalData(mine.name, mine.train, mine.heldout, split.base_domain)
    raise ValueError(
        "this node has no local data: a simulated node needs 'partition-id' and 'num-partitions' in its node config"
    )
