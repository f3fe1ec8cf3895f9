"""How a simulation deals its dataset out to clients: Flower Datasets' partitioners, and Stamen's stages on top.

The dataset is the embedded corpus (its topic groups in the ``topic`` column) or ``dataset = PATH``
(:mod:`.dataset_source`). ``partition-by`` names the column the label- and id-based schemes read (the
embedded corpus: ``topic``):

- ``natural``: ``NaturalIdPartitioner``, one client per distinct value in order of first appearance (the
  embedded corpus: one topic group per client, the most non-IID);
- ``iid``: ``IidPartitioner`` on the shuffled rows;
- ``dirichlet``: ``DirichletPartitioner``, each value's rows spread over clients in Dirichlet(``partition-alpha``)
  proportions (Hsu et al. 2019): small alpha, each value lands on few clients; large alpha, near IID;
- ``pathological``: ``PathologicalPartitioner``, each client holds ``num_classes_per_partition`` values (2);
- ``shard``: ``ShardPartitioner``, each client ``num_shards_per_partition`` sorted shards (2);
- ``quantity``: IID contents, client sizes drawn from Dirichlet(``partition-alpha``), dealt by ``SizePartitioner``.

``partition-options`` passes any other keyword argument of the partitioner. What flwr-datasets lacks:

- ``stream``: the natural split, each client's training data revealed in ``stream-stages`` stages over the
  rounds, one stage at a time (continual learning);
- ``topic-shift``: a stream whose stages are different natural groups (client i's stage k is group
  i + k x clients, every stage the same size), so a later stage can erase an earlier one: the scenario in which
  replay has something to protect.

Every client holds out the last fifth (at most 16) of its partition as dealt: a random sample where the
partitioner shuffled, a natural group's latest rows where it did not.
"""

from __future__ import annotations

import contextlib
import io
import math
import warnings
from functools import lru_cache

import datasets
import numpy as np
from flwr_datasets import partitioner as flwr_partitioners

from stamen.shared.config import DataSpec
from stamen.shared.corpus import ClientDataset, natural_capacity
from stamen.shared.examples import Example

from .dataset_source import EMBEDDED_GROUP, DatasetError, embedded_dataset, load_rows, to_examples

MIN_EXAMPLES = 4  # a client needs something to train on and something to hold out
HELDOUT_FRACTION, MAX_HELDOUT = 0.2, 16
EMBEDDED = DataSpec()  # the embedded corpus, dealt naturally
DEFAULT_OPTIONS = {"pathological": {"num_classes_per_partition": 2}, "shard": {"num_shards_per_partition": 2}}


@lru_cache(maxsize=16)
def client_datasets(num_clients: int, seed: int = 0, data: DataSpec = EMBEDDED) -> tuple[ClientDataset, ...]:
    """The clients' data under ``data`` (deterministic: every process computes the same split)."""
    if data.partition == "topic-shift":
        return _topic_shift(num_clients, seed, data)
    rows, by = _rows(num_clients, seed, data)
    parts = _partitions(rows, num_clients, seed, data, by)
    columns = data.column_names()
    clients = tuple(_client(name, to_examples(part, columns)) for name, part in parts)
    for client in clients:
        if len(client.train) + len(client.heldout) < MIN_EXAMPLES:
            raise DatasetError(f"partition {data.partition} gave client {client.name} "
                               f"{len(client.train) + len(client.heldout)} examples, fewer than {MIN_EXAMPLES}: "
                               "use fewer clients or another partition")
    return clients


def _rows(num_clients: int, seed: int, data: DataSpec) -> tuple[datasets.Dataset, str]:
    """The dataset to partition and the column its id- and label-based schemes read."""
    if data.dataset:
        return load_rows(data.dataset), data.partition_by
    if data.partition in ("natural", "stream"):
        return embedded_dataset(num_clients, seed), EMBEDDED_GROUP
    # the redistributing schemes deal the topic groups of up to as many clients as the natural split can have
    return embedded_dataset(min(num_clients, natural_capacity()), seed), data.partition_by or EMBEDDED_GROUP


def _partitions(
    rows: datasets.Dataset, num_clients: int, seed: int, data: DataSpec, by: str
) -> list[tuple[str, datasets.Dataset]]:
    """(client name, rows) for every client, by the flwr-datasets partitioner ``data.partition`` names."""
    scheme = "natural" if data.partition == "stream" else data.partition
    if scheme not in ("iid", "quantity") and not by:
        raise DatasetError(f"partition {data.partition} splits by a column: set partition-by to one of "
                           f"{rows.column_names}")
    if scheme not in ("iid", "quantity") and by not in rows.column_names:
        raise DatasetError(f"partition-by = {by!r} is not a column of the dataset ({rows.column_names})")
    if scheme == "natural":
        return _natural(rows, num_clients, by)
    shuffled = rows.shuffle(seed=seed)
    options = {**DEFAULT_OPTIONS.get(scheme, {}), **data.partitioner_options()}
    try:
        if scheme == "iid":
            partitioner = flwr_partitioners.IidPartitioner(num_clients, **options)
        elif scheme == "quantity":
            sizes = _sizes(np.random.default_rng(seed), data.alpha, num_clients, len(rows))
            partitioner = flwr_partitioners.SizePartitioner(sizes, **options)
        elif scheme == "dirichlet":
            partitioner = flwr_partitioners.DirichletPartitioner(
                num_clients, by, data.alpha, **{"min_partition_size": MIN_EXAMPLES, "seed": seed, **options})
        elif scheme == "pathological":
            partitioner = flwr_partitioners.PathologicalPartitioner(num_clients, by, **{"seed": seed, **options})
        else:
            partitioner = flwr_partitioners.ShardPartitioner(num_clients, by, **{"seed": seed, **options})
        partitioner.dataset = shuffled
        with warnings.catch_warnings():  # Dirichlet's redraws below the minimum size warn; its last one raises
            warnings.simplefilter("ignore", UserWarning)
            return [(f"{data.partition}-{i}", partitioner.load_partition(i)) for i in range(num_clients)]
    except (TypeError, ValueError) as error:
        raise DatasetError(f"partition {data.partition} ({num_clients} clients, partition-alpha {data.alpha}, "
                           f"partition-options {options}) failed in flwr-datasets: {error}") from None


def _natural(rows: datasets.Dataset, num_clients: int, by: str) -> list[tuple[str, datasets.Dataset]]:
    """One client per distinct value of ``by``, in the order the values first appear in the dataset (the
    embedded corpus: the natural split's, largest English topic group first)."""
    partitioner = flwr_partitioners.NaturalIdPartitioner(partition_by=by)
    partitioner.dataset = rows
    if partitioner.num_partitions != num_clients:
        raise DatasetError(f"partition natural gives one client per distinct {by!r}: the dataset has "
                           f"{partitioner.num_partitions}, the simulation asks for {num_clients} clients")
    first_row = {value: row for row, value in reversed(list(enumerate(rows[by])))}
    ids = sorted(range(num_clients), key=lambda i: first_row[partitioner.partition_id_to_natural_id[i]])
    with contextlib.redirect_stderr(io.StringIO()):  # flwr-datasets' progress bar over a step of milliseconds
        return [(str(partitioner.partition_id_to_natural_id[i]), partitioner.load_partition(i)) for i in ids]


def _topic_shift(num_clients: int, seed: int, data: DataSpec) -> tuple[ClientDataset, ...]:
    """Client i trains on natural groups i, i + n, i + 2n, ... one per stage, each cut to the smallest's size;
    its held-out examples come from every one of its groups, in stage order (:func:`heldout_stages`)."""
    stages = data.stream_stages
    groups = client_datasets(num_clients * stages, seed, DataSpec(
        dataset=data.dataset, columns=data.columns, partition="natural", partition_by=data.partition_by))
    clients = []
    for i in range(num_clients):
        mine = [groups[i + k * num_clients] for k in range(stages)]
        size = min(len(group.train) for group in mine)
        per_group = _heldout_per_stage(stages)
        clients.append(ClientDataset(
            f"shift-{i}", tuple(e for group in mine for e in group.train[:size]),
            tuple(e for group in mine for e in group.heldout[:per_group])))
    return tuple(clients)


def heldout_stages(client: ClientDataset, stage: int, data: DataSpec) -> tuple[tuple[Example, ...], ...]:
    """A topic-shift client's held-out examples of each stage up to ``stage`` (each stage another topic); none for
    other partitions, whose held-out data does not divide by stage."""
    if data.partition != "topic-shift":
        return ()
    per_group = _heldout_per_stage(data.stream_stages)
    return tuple(client.heldout[j * per_group:(j + 1) * per_group] for j in range(stage + 1))


def _heldout_per_stage(stages: int) -> int:
    return max(1, MAX_HELDOUT // stages)


def stream_stage(server_round: int, num_rounds: int, stages: int) -> int:
    """Which stage (0-based) of its data a client trains on in ``server_round``."""
    return min(stages - 1, (server_round - 1) * stages // max(num_rounds, 1))


def stage_examples(train: tuple[Example, ...], stage: int, stages: int) -> tuple[Example, ...]:
    """The ``stage``-th of ``stages`` consecutive, equal parts of a client's training data."""
    size = math.ceil(len(train) / stages)
    return train[stage * size:(stage + 1) * size]


def _sizes(rng: np.random.Generator, alpha: float, num_clients: int, total: int) -> list[int]:
    """Dirichlet(alpha) client sizes, every client above the minimum size, summing to ``total``."""
    floor = MIN_EXAMPLES / total
    if floor * num_clients > 1:
        raise DatasetError(f"{total} examples cannot give {num_clients} clients {MIN_EXAMPLES} each")
    proportions = floor + (1 - floor * num_clients) * rng.dirichlet(np.full(num_clients, alpha))
    cuts = np.round(np.cumsum(proportions) * total).astype(int)
    return np.diff(cuts, prepend=0).tolist()


def _client(name: str, examples: list[Example]) -> ClientDataset:
    """A client's partition, its last rows as dealt held out: a random sample where the partitioner shuffled,
    and a natural group's latest rows (the embedded corpus's groups come in its natural split's order, so
    they are cut exactly as that split cut them)."""
    held = min(MAX_HELDOUT, max(1, int(len(examples) * HELDOUT_FRACTION)))
    return ClientDataset(name, tuple(examples[:-held]), tuple(examples[-held:]))
