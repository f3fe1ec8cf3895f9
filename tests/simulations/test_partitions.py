"""Partitioners: the same examples dealt differently, with the skew each scheme promises."""

from collections import Counter

import numpy as np
import pytest
from inprocess_grid import simulate_in_this_process

from stamen.shared.corpus import natural_capacity, natural_split
from stamen.shared.run_folder import RunFolder
from stamen.simulations.partitions import split_corpus, stage_examples, stream_stage

CLIENTS = 10


def topic_of() -> dict:
    return {example: i for i, client in enumerate(natural_split(CLIENTS).clients)
            for example in client.train + client.heldout}


def topic_skew(partition: str, alpha: float = 0.5, seed: int = 0) -> float:
    """Mean total-variation distance between each client's topic mix and the whole corpus's."""
    topics = topic_of()
    clients = split_corpus(CLIENTS, seed, partition, alpha).clients
    overall = np.bincount(list(topics.values()), minlength=CLIENTS) / len(topics)
    distances = []
    for client in clients:
        mix = np.bincount([topics[e] for e in client.train + client.heldout], minlength=CLIENTS)
        distances.append(0.5 * np.abs(mix / mix.sum() - overall).sum())
    return float(np.mean(distances))


@pytest.mark.parametrize("partition", ["iid", "dirichlet", "quantity"])
def test_every_example_goes_to_exactly_one_client(partition):
    dealt = Counter(e for c in split_corpus(CLIENTS, 0, partition).clients for e in c.train + c.heldout)
    assert set(dealt) == set(topic_of()) and set(dealt.values()) == {1}
    assert all(len(c.heldout) >= 1 and len(c.train) >= 3 for c in split_corpus(CLIENTS, 0, partition).clients)


def test_dirichlet_alpha_moves_clients_from_single_topics_to_the_corpus_mix():
    assert topic_skew("natural") > 0.8 and topic_skew("iid") < 0.15
    for seed in (0, 1):  # not one lucky draw
        skews = [topic_skew("dirichlet", alpha, seed) for alpha in (0.05, 0.5, 100.0)]
        assert skews[0] > 0.6 and skews[2] < 0.1
        assert skews == sorted(skews, reverse=True)


def test_quantity_skew_varies_sizes_but_not_contents():
    sizes = [len(c.train) + len(c.heldout) for c in split_corpus(CLIENTS, 0, "quantity", 0.5).clients]
    iid_sizes = [len(c.train) + len(c.heldout) for c in split_corpus(CLIENTS, 0, "iid").clients]
    assert np.std(sizes) / np.mean(sizes) > 0.4 and np.std(iid_sizes) / np.mean(iid_sizes) < 0.05
    assert topic_skew("quantity", 0.5) < 0.35  # contents stay mixed (small clients vary more)


def test_stream_reveals_each_clients_data_in_disjoint_stages_over_the_rounds():
    assert [stream_stage(r, num_rounds=6, stages=3) for r in range(1, 7)] == [0, 0, 1, 1, 2, 2]
    assert [stream_stage(r, num_rounds=2, stages=3) for r in (1, 2)] == [0, 1]
    train = split_corpus(CLIENTS, 0, "stream").clients[0].train
    parts = [stage_examples(train, s, 3) for s in range(3)]
    assert sum(parts, ()) == train and all(parts) and not set(parts[0]) & set(parts[1])


def test_topic_shift_gives_each_client_another_topic_in_every_stage():
    clients, stages = 4, 3
    natural = natural_split(clients * stages, 0).clients
    split = split_corpus(clients, 0, "topic-shift", stages=stages)
    seen: set = set()
    for i, client in enumerate(split.clients):
        parts = [stage_examples(client.train, k, stages) for k in range(stages)]
        assert len({len(part) for part in parts}) == 1 and sum(parts, ()) == client.train  # equal stages
        for k, part in enumerate(parts):  # stage k is exactly topic group i + k x clients, nothing else
            assert set(part) <= set(natural[i + k * clients].train)
        held = {k for k in range(stages) for e in client.heldout if e in natural[i + k * clients].heldout}
        assert held == set(range(stages))  # held out from every one of its topics
        assert not seen & set(client.train + client.heldout)  # no example is two clients'
        seen |= set(client.train + client.heldout)


def test_a_bad_alpha_is_refused_with_its_name():
    with pytest.raises(ValueError, match="partition-alpha"):
        split_corpus(CLIENTS, 0, "dirichlet", 0.0)


def test_redistributing_partitions_serve_more_clients_than_there_are_topics():
    topics = natural_capacity()
    split = split_corpus(topics + 21, seed=0, partition="iid")
    assert len(split.clients) == topics + 21
    assert all(len(client.train) >= 3 and client.heldout for client in split.clients)
    with pytest.raises(ValueError, match=f"at most {topics} clients"):
        split_corpus(topics + 21, seed=0, partition="natural")


@pytest.mark.usefixtures("flower_task_identity")
def test_a_topic_shift_run_trains_one_topic_per_stage_and_measures_backward_transfer(tmp_path):
    simulate_in_this_process({"base-model": "tiny", "quantisation": "none", "local-steps": 2,
                              "partition": "topic-shift", "stream-stages": 3}, 2, 3, tmp_path, "shift")
    rows = RunFolder(tmp_path / "shift").rows()
    evaluated = [r for r in rows if r.get("phase") == "evaluate"]
    assert {r["client"] for r in evaluated} == {"shift-0", "shift-1"}
    assert [r["round"] for r in evaluated if "backward_transfer" in r] == [2, 2, 3, 3]  # stage 0 ended in round 1
