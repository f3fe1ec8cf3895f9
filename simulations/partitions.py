"""How a simulation deals the embedded corpus out to its clients.

The natural split (one topic group per client, see ``corpus``) defines the topics;
the other schemes redistribute the same examples, so runs with different schemes
differ only in who holds what:

- ``natural``: one topic per client (the most non-IID);
- ``iid``: every client a uniform random share of all topics;
- ``dirichlet``: each topic's examples spread over clients with proportions drawn
  from Dirichlet(alpha): small alpha, each topic lands on few clients; large alpha, near IID;
- ``quantity``: IID contents, client sizes drawn from Dirichlet(alpha);
- ``stream``: the natural split, each client's training data revealed in
  ``stream-stages`` stages over the rounds, one stage at a time (continual learning);
- ``topic-shift``: a stream whose stages are different topics (client i's stage k is topic group
  i + k x clients of the natural split, every stage the same size), so a later stage can erase an
  earlier one: the scenario in which replay has something to protect.
"""

from __future__ import annotations

import math
import random
from functools import lru_cache

import numpy as np

from stamen.shared.config import PARTITIONS
from stamen.shared.corpus import ClientDataset, CorpusSplit, natural_capacity, natural_split
from stamen.shared.examples import Example

MIN_EXAMPLES = 4  # a client needs something to train on and something to hold out
HELDOUT_FRACTION, MAX_HELDOUT = 0.2, 16


@lru_cache(maxsize=16)
def split_corpus(
    num_clients: int, seed: int = 0, partition: str = "natural", alpha: float = 0.5, stages: int = 3
) -> CorpusSplit:
    """The clients' data under ``partition`` (deterministic: every process computes the same split)."""
    if partition not in PARTITIONS:
        raise ValueError(f"partition {partition!r} must be one of {PARTITIONS}")
    if partition in ("natural", "stream"):
        return natural_split(num_clients, seed)
    if partition == "topic-shift":
        return _topic_shift(num_clients, seed, stages)
    # the redistributing schemes deal the topics of up to as many clients as the natural split can have
    natural = natural_split(min(num_clients, natural_capacity()), seed)
    if alpha <= 0:
        raise ValueError(f"partition-alpha must be > 0, not {alpha}")
    topics = [client.train + client.heldout for client in natural.clients]
    rng = np.random.default_rng(seed)
    if partition == "iid":
        shares = _deal(_pooled(topics, rng), np.full(num_clients, 1.0 / num_clients))
    elif partition == "quantity":
        shares = _deal(_pooled(topics, rng), _proportions(rng, alpha, num_clients, sum(map(len, topics))))
    else:
        shares = _dirichlet_by_topic(topics, alpha, rng)
    clients = tuple(_client(f"{partition}-{i}", share, random.Random(f"{seed}/{i}")) for i, share in enumerate(shares))
    return CorpusSplit(clients, natural.base_domain, natural.root, natural.anchor)


def _topic_shift(num_clients: int, seed: int, stages: int) -> CorpusSplit:
    """Client i trains on topic groups i, i + n, i + 2n, ... one per stage, each cut to the smallest's size;
    its held-out examples come from every one of its topics."""
    natural = natural_split(num_clients * stages, seed)
    clients = []
    for i in range(num_clients):
        topics = [natural.clients[i + k * num_clients] for k in range(stages)]
        size = min(len(topic.train) for topic in topics)
        per_topic = max(1, MAX_HELDOUT // stages)
        clients.append(ClientDataset(
            f"shift-{i}", tuple(e for topic in topics for e in topic.train[:size]),
            tuple(e for topic in topics for e in topic.heldout[:per_topic])))
    return CorpusSplit(tuple(clients), natural.base_domain, natural.root, natural.anchor)


def stream_stage(server_round: int, num_rounds: int, stages: int) -> int:
    """Which stage (0-based) of its data a client trains on in ``server_round``."""
    return min(stages - 1, (server_round - 1) * stages // max(num_rounds, 1))


def stage_examples(train: tuple[Example, ...], stage: int, stages: int) -> tuple[Example, ...]:
    """The ``stage``-th of ``stages`` consecutive, equal parts of a client's training data."""
    size = math.ceil(len(train) / stages)
    return train[stage * size:(stage + 1) * size]


def _pooled(topics: list[tuple[Example, ...]], rng: np.random.Generator) -> list[Example]:
    pool = [example for topic in topics for example in topic]
    return [pool[i] for i in rng.permutation(len(pool))]


def _proportions(rng: np.random.Generator, alpha: float, num_clients: int, total: int) -> np.ndarray:
    """Dirichlet(alpha) client shares with every client above the minimum size."""
    floor = MIN_EXAMPLES / total
    if floor * num_clients > 1:
        raise ValueError(f"{total} examples cannot give {num_clients} clients {MIN_EXAMPLES} each")
    return floor + (1 - floor * num_clients) * rng.dirichlet(np.full(num_clients, alpha))


def _deal(pool: list[Example], proportions: np.ndarray) -> list[list[Example]]:
    cuts = np.round(np.cumsum(proportions)[:-1] * len(pool)).astype(int)
    return [list(part) for part in np.split(np.array(pool, dtype=object), cuts)]


def _dirichlet_by_topic(
    topics: list[tuple[Example, ...]], alpha: float, rng: np.random.Generator
) -> list[list[Example]]:
    """Label-skew partition (Hsu et al. 2019) with topics as labels; redrawn until every client has enough."""
    num_clients = len(topics)
    for _ in range(100):
        shares: list[list[Example]] = [[] for _ in range(num_clients)]
        for topic in topics:
            order = rng.permutation(len(topic))
            cuts = np.round(np.cumsum(rng.dirichlet(np.full(num_clients, alpha)))[:-1] * len(topic)).astype(int)
            for client, part in enumerate(np.split(order, cuts)):
                shares[client] += [topic[i] for i in part]
        if min(map(len, shares)) >= MIN_EXAMPLES:
            return shares
    raise ValueError(f"Dirichlet({alpha}) left a client with fewer than {MIN_EXAMPLES} examples in 100 draws; "
                     "raise partition-alpha or use fewer clients")


def _client(name: str, examples: list[Example], rng: random.Random) -> ClientDataset:
    rng.shuffle(examples)
    held = min(MAX_HELDOUT, max(1, int(len(examples) * HELDOUT_FRACTION)))
    return ClientDataset(name, tuple(examples[held:]), tuple(examples[:held]))
