"""Partitioners (Flower Datasets', and Stamen's stages on top): the same examples dealt differently, with the skew
each scheme promises, on the embedded corpus and on any dataset."""

import json
from collections import Counter

import datasets
import numpy as np
import pytest
from inprocess_grid import simulate_in_this_process

from stamen.shared.config import ConfigError, DataSpec
from stamen.shared.corpus import natural_capacity, natural_split
from stamen.shared.examples import Example, encode_example
from stamen.shared.run_folder import RunFolder
from stamen.simulations.dataset_source import DatasetError
from stamen.simulations.partitions import MIN_EXAMPLES, client_datasets, heldout_stages, stage_examples, stream_stage

CLIENTS = 10


def topic_of() -> dict:
    return {example: i for i, client in enumerate(natural_split(CLIENTS).clients)
            for example in client.train + client.heldout}


def everything(client) -> set:
    return set(client.train + client.heldout)


def topic_skew(shares: list[list[Example]]) -> float:
    """Mean total-variation distance between each client's topic mix and the whole corpus's."""
    topics = topic_of()
    overall = np.bincount(list(topics.values()), minlength=CLIENTS) / len(topics)
    distances = []
    for share in shares:
        mix = np.bincount([topics[e] for e in share], minlength=CLIENTS)
        distances.append(0.5 * np.abs(mix / mix.sum() - overall).sum())
    return float(np.mean(distances))


def dealt(partition: str, alpha: float = 0.5, seed: int = 0, **settings) -> list[list[Example]]:
    clients = client_datasets(CLIENTS, seed, DataSpec(partition=partition, alpha=alpha, **settings))
    return [list(client.train + client.heldout) for client in clients]


def size_spread(shares: list[list[Example]]) -> float:
    sizes = [len(share) for share in shares]
    return float(np.std(sizes) / np.mean(sizes))


@pytest.mark.parametrize(("partition", "whole"), [("iid", True), ("dirichlet", True), ("quantity", True),
                                                 ("pathological", False), ("shard", False)])
def test_every_example_goes_to_exactly_one_client(partition, whole):
    """pathological (random topics per client) and shard (whole shards only) may leave examples to no one."""
    counts = Counter(e for share in dealt(partition) for e in share)
    assert set(counts.values()) == {1} and set(counts) <= set(topic_of())
    assert (set(counts) == set(topic_of())) == whole or not whole
    clients = client_datasets(CLIENTS, 0, DataSpec(partition=partition))
    assert len(clients) == CLIENTS and all(len(c.heldout) >= 1 and len(c.train) >= 3 for c in clients)


def _stamen_dirichlet(alpha: float, seed: int) -> list[list[Example]]:
    """The label-skew split Stamen drew before flwr-datasets (Hsu et al. 2019, topics as labels, redrawn until
    every client has MIN_EXAMPLES): the reference the partitioner it uses now must match in distribution."""
    topics = [c.train + c.heldout for c in natural_split(CLIENTS, seed).clients]
    rng = np.random.default_rng(seed)
    while True:
        shares: list[list[Example]] = [[] for _ in range(CLIENTS)]
        for topic in topics:
            order = rng.permutation(len(topic))
            cuts = np.round(np.cumsum(rng.dirichlet(np.full(CLIENTS, alpha)))[:-1] * len(topic)).astype(int)
            for client, part in enumerate(np.split(order, cuts)):
                shares[client] += [topic[i] for i in part]
        if min(map(len, shares)) >= MIN_EXAMPLES:
            return shares


def test_the_natural_split_is_the_one_stamen_used_before_and_dirichlet_keeps_its_statistics():
    # natural: every client holds exactly what it held before, train and held-out, in the same order
    assert client_datasets(CLIENTS, 0, DataSpec(partition="natural")) == natural_split(CLIENTS).clients
    # Dirichlet: flwr-datasets' partitioner against Stamen's own draw, 12 seeds each, at three concentrations
    for alpha in (0.1, 0.5, 5.0):
        ours = [_stamen_dirichlet(alpha, seed) for seed in range(12)]
        flwr = [dealt("dirichlet", alpha, seed) for seed in range(12)]
        skews = np.array([[topic_skew(s) for s in ours], [topic_skew(s) for s in flwr]])
        spreads = np.array([[size_spread(s) for s in ours], [size_spread(s) for s in flwr]])
        assert abs(skews[0].mean() - skews[1].mean()) < 0.06, (alpha, skews.mean(axis=1))
        assert abs(spreads[0].mean() - spreads[1].mean()) < 0.2, (alpha, spreads.mean(axis=1))


def test_dirichlet_alpha_moves_clients_from_single_topics_to_the_corpus_mix():
    assert topic_skew(dealt("natural")) > 0.8 and topic_skew(dealt("iid")) < 0.15
    for seed in (0, 1):  # not one lucky draw
        skews = [topic_skew(dealt("dirichlet", alpha, seed)) for alpha in (0.05, 0.5, 100.0)]
        assert skews[0] > 0.6 and skews[2] < 0.1
        assert skews == sorted(skews, reverse=True)


def test_pathological_and_shard_clients_hold_few_topics_as_their_options_say():
    topics = topic_of()
    for options, most in (("", 2), ("num_classes_per_partition=1", 1)):
        shares = dealt("pathological", options=options)
        assert max(len({topics[e] for e in share}) for share in shares) == most
    shards = dealt("shard", options="num_shards_per_partition=2")
    assert max(len({topics[e] for e in share}) for share in shards) <= 4  # two sorted shards, each spans <= 2
    with pytest.raises(DatasetError, match="no_such_option"):
        client_datasets(CLIENTS, 0, DataSpec(partition="shard", options="no_such_option=3"))


def test_quantity_skew_varies_sizes_but_not_contents():
    assert size_spread(dealt("quantity", 0.5)) > 0.4 and size_spread(dealt("iid")) < 0.05
    assert topic_skew(dealt("quantity", 0.5)) < 0.35  # contents stay mixed (small clients vary more)


def test_stream_reveals_each_clients_data_in_disjoint_stages_over_the_rounds():
    assert [stream_stage(r, num_rounds=6, stages=3) for r in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert [stream_stage(r, num_rounds=2, stages=3) for r in (1, 2)] == [0, 1]
    train = client_datasets(CLIENTS, 0, DataSpec(partition="stream"))[0].train
    parts = [stage_examples(train, s, 3) for s in range(3)]
    assert sum(parts, ()) == train and all(parts) and not set(parts[0]) & set(parts[1])


def test_topic_shift_gives_each_client_another_topic_in_every_stage():
    clients, stages = 4, 3
    natural = natural_split(clients * stages, 0).clients
    split = client_datasets(clients, 0, DataSpec(partition="topic-shift", stream_stages=stages))
    seen: set = set()
    for i, client in enumerate(split):
        parts = [stage_examples(client.train, k, stages) for k in range(stages)]
        assert len({len(part) for part in parts}) == 1 and sum(parts, ()) == client.train  # equal stages
        for k, part in enumerate(parts):  # stage k is exactly topic group i + k x clients, nothing else
            assert set(part) <= everything(natural[i + k * clients])
        held = {k for k in range(stages) for e in client.heldout if e in everything(natural[i + k * clients])}
        assert held == set(range(stages))  # held out from every one of its topics
        by_stage = heldout_stages(client, stages - 1, DataSpec(partition="topic-shift", stream_stages=stages))
        for k, part in enumerate(by_stage):  # and each stage's held-out examples are that stage's topic alone
            assert part and set(part) <= everything(natural[i + k * clients])
        assert len(heldout_stages(client, 0, DataSpec(partition="topic-shift", stream_stages=stages))) == 1
        assert not set(client.train) & set(client.heldout)
        assert not seen & everything(client)  # no example is two clients'
        seen |= everything(client)


def test_a_bad_alpha_is_refused_with_its_name():
    with pytest.raises(ValueError, match="partition-alpha"):
        DataSpec(partition="dirichlet", alpha=0.0)


def test_redistributing_partitions_serve_more_clients_than_there_are_topics():
    topics = natural_capacity()
    split = client_datasets(topics + 21, 0, DataSpec(partition="iid"))
    assert len(split) == topics + 21
    assert all(len(client.train) >= 3 and client.heldout for client in split)
    with pytest.raises(ValueError, match=f"at most {topics} clients"):
        client_datasets(topics + 21, 0, DataSpec(partition="natural"))


def _rows(users: int = 3, per_user: int = 10) -> list[dict]:
    return [{"question": f"What did user {u} say in note {n}?", "answer": f"Note {n} of user {u}.", "user": f"u{u}"}
            for u in range(users) for n in range(per_user)]


@pytest.mark.parametrize("kind", ["save_to_disk", "jsonl", "csv", "parquet"])
def test_a_local_dataset_is_dealt_by_its_columns(kind, tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    table = datasets.Dataset.from_list(_rows())
    path = tmp_path / ("saved" if kind == "save_to_disk" else f"rows.{kind}")
    {"save_to_disk": table.save_to_disk, "jsonl": table.to_json, "csv": table.to_csv,
     "parquet": table.to_parquet}[kind](str(path))
    data = DataSpec(dataset=str(path), columns="prompt=question,response=answer", partition_by="user")
    clients = client_datasets(3, 0, data)
    assert sorted(c.name for c in clients) == ["u0", "u1", "u2"]
    for client in clients:  # one user's notes each, a fifth held out
        assert len(client.train) == 8 and len(client.heldout) == 2
        assert {e.prompt.split()[3] for e in everything(client)} == {client.name[1]}
    iid = client_datasets(2, 0, DataSpec(dataset=str(path), columns="prompt=question,response=answer",
                                         partition="iid"))
    assert sorted(len(everything(c)) for c in iid) == [15, 15]
    assert not (tmp_path / "hf-cache").exists()  # the rows were read where they are: no copy in a cache


def test_a_chat_column_trains_the_last_reply_after_the_conversation_so_far(tmp_path, tiny_folder):
    from stamen.shared.base_model import load_base

    conversations = [[{"role": "user", "content": f"Hi, I am {name}."}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": "What is my name?"}, {"role": "assistant", "content": name}]
                     for name in ("Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal")]
    path = tmp_path / "chats.jsonl"
    path.write_text("".join(json.dumps({"conversation": c}) + "\n" for c in conversations))
    clients = client_datasets(2, 0, DataSpec(dataset=str(path), columns="messages=conversation", partition="iid"))
    example = next(e for c in clients for e in everything(c) if e.response == "Ada")
    assert example.prompt == "What is my name?"
    assert example.history == (("user", "Hi, I am Ada."), ("assistant", "Hello!"))
    tokenizer = load_base("tiny", quantisation="none").tokenizer
    encoded = encode_example(tokenizer, example, 256)
    seen = tokenizer.decode(encoded.input_ids)
    assert seen.index("Hi, I am Ada.") < seen.index("Hello!") < seen.index("What is my name?")  # all turns, in order
    scored = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != -100])
    assert "Ada" in scored and "Hi" not in scored  # only the reply is trained on


def test_a_dataset_that_cannot_be_dealt_says_why(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows()))
    cases = [
        (DataSpec(dataset=str(tmp_path / "missing.jsonl")), "does not exist"),
        (DataSpec(dataset=str(tmp_path)), "save_to_disk"),
        (DataSpec(dataset=str(path), partition_by="user"), "dataset-columns"),  # no prompt/response/text columns
        (DataSpec(dataset=str(path), columns="prompt=question,response=answer"), "partition-by"),
        (DataSpec(dataset=str(path), columns="prompt=question,response=answer", partition_by="nope"), "'nope'"),
    ]
    for data, message in cases:
        with pytest.raises(DatasetError, match=message):
            client_datasets(3, 0, data)
    with pytest.raises(ConfigError, match=r"dataset-columns.*field=column"):
        DataSpec(dataset=str(path), columns="answer=question")  # refused with the configuration, before any run
    with pytest.raises(DatasetError, match="distinct 'user': the dataset has 3, the simulation asks for 4"):
        client_datasets(4, 0, DataSpec(dataset=str(path), columns="prompt=question,response=answer",
                                       partition_by="user"))


@pytest.mark.usefixtures("flower_task_identity")
def test_a_simulation_trains_on_a_local_dataset_split_by_user(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in _rows(users=2)))
    simulate_in_this_process({"base-model": "tiny", "quantisation": "none", "local-steps": 2, "dataset": str(path),
                              "dataset-columns": "prompt=question,response=answer", "partition-by": "user"},
                             2, 1, tmp_path, "users")
    evaluated = [r for r in RunFolder(tmp_path / "users").rows() if r.get("phase") == "evaluate"]
    assert sorted(r["client"] for r in evaluated) == ["u0", "u1"]


@pytest.mark.usefixtures("flower_task_identity")
def test_a_topic_shift_run_trains_one_topic_per_stage_and_measures_backward_transfer(tmp_path):
    simulate_in_this_process({"base-model": "tiny", "quantisation": "none", "local-steps": 2,
                              "partition": "topic-shift", "stream-stages": 3}, 2, 3, tmp_path, "shift")
    rows = RunFolder(tmp_path / "shift").rows()
    evaluated = [r for r in rows if r.get("phase") == "evaluate"]
    assert {r["client"] for r in evaluated} == {"shift-0", "shift-1"}
    assert [r["round"] for r in evaluated if "backward_transfer" in r] == [2, 2, 3, 3]  # stage 0 ended in round 1
    # the held-out loss of the stage training is on, and of the earlier ones (what it may erase), apart
    assert all("current_stage_heldout_loss" in r for r in evaluated)
    assert [r["round"] for r in evaluated if "past_stage_heldout_loss" in r] == [2, 2, 3, 3]
    last = [r for r in rows if r["kind"] == "round"][-1]
    assert {"eval_current_stage_heldout_loss", "eval_past_stage_heldout_loss"} <= set(last)
