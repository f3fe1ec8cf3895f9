"""The replay buffer: a reservoir (an unbiased sample) or a k-centre core-set, bounded, the same after a restart
from disk."""

import numpy as np
from scipy import stats

from stamen.client.loaded_base import client_runtime
from stamen.client.replay.buffer import ReplayBuffer, example_bytes
from stamen.client.replay.coreset import base_embedding, coverage_radius, k_centre_selection
from stamen.client.state_store import ClientStateStore
from stamen.shared.config import RunConfig
from stamen.shared.corpus import load_topics
from stamen.shared.examples import Example


def _stream(n, width=10):
    return [Example(response=f"answer {i:0{width}d}", prompt=f"question {i:04d}") for i in range(n)]


def test_every_example_of_the_stream_is_equally_likely_to_be_kept():
    stream, capacity, trials = _stream(200), 20, 2000
    kept = np.zeros(len(stream))
    for seed in range(trials):
        buffer = ReplayBuffer(capacity, max_bytes=10**6, seed=seed)
        buffer.add(stream[:70])  # in two rounds, as a device adds each round's examples
        buffer.add(stream[70:])
        kept[[int(e.response.split()[1]) for e in buffer.items]] += 1
    assert kept.sum() == capacity * trials
    # inclusion probability capacity/n for every position: early and late examples alike
    by_decile = kept.reshape(10, 20).sum(axis=1)
    assert stats.chisquare(by_decile).pvalue > 0.001
    assert abs(kept[:20].mean() - kept[-20:].mean()) < 0.2 * capacity * trials / len(stream)


def test_a_restarted_device_continues_the_same_sample(tmp_path):
    # chats among them: their earlier turns are stored, read back and counted against the byte bound
    stream = [Example(e.response, e.prompt, (("user", f"earlier {i}"), ("assistant", "noted")) if i % 2 else ())
              for i, e in enumerate(_stream(300))]
    assert example_bytes(stream[1]) == example_bytes(stream[0]) + len("earlier 1noted")
    uninterrupted = ReplayBuffer(25, max_bytes=10**6, seed=3)
    for round_examples in (stream[:100], stream[100:200], stream[200:]):
        uninterrupted.add(round_examples)
    first = ReplayBuffer(25, max_bytes=10**6, seed=3)
    first.add(stream[:100])
    first.save(ClientStateStore(tmp_path), server_round=1)
    for server_round, examples in ((2, stream[100:200]), (3, stream[200:])):
        restored = ReplayBuffer.load(ClientStateStore(tmp_path), server_round, 25, 10**6, seed=3)
        restored.add(examples)
        restored.save(ClientStateStore(tmp_path), server_round)
    final = ReplayBuffer.load(ClientStateStore(tmp_path), 4, 25, 10**6, seed=3)
    assert final.items == uninterrupted.items and final.seen == 300


def test_the_byte_bound_holds_and_shrinks_the_capacity():
    stream = _stream(500)
    per_example = example_bytes(stream[0])
    buffer = ReplayBuffer(100, max_bytes=30 * per_example, seed=0)
    buffer.add(stream)
    assert buffer.nbytes <= 30 * per_example
    assert len(buffer.items) == buffer.capacity == 30
    assert len({e.response for e in buffer.items}) == 30


def test_a_smaller_configured_capacity_applies_on_load(tmp_path):
    buffer = ReplayBuffer(50, max_bytes=10**6, seed=1)
    buffer.add(_stream(80))
    buffer.save(ClientStateStore(tmp_path), 1)
    smaller = ReplayBuffer.load(ClientStateStore(tmp_path), 2, capacity=10, max_bytes=10**6, seed=1)
    assert len(smaller.items) == 10 and set(smaller.items) <= set(buffer.items)


def test_every_replay_source_the_config_names_is_registered_on_the_device():
    from stamen.client.replay.hook import REPLAY_SOURCE_CLASSES
    from stamen.shared.config import REPLAY_SOURCES

    assert set(REPLAY_SOURCE_CLASSES) == set(REPLAY_SOURCES)
    assert {name for name, source in REPLAY_SOURCE_CLASSES.items() if source.uses_buffer} == {"buffer", "ewc"}


def test_a_k_centre_buffer_covers_a_stream_whose_later_topic_floods_it_better_than_a_reservoir(tmp_path, tiny_folder):
    """Three topics arrive one after another, the last far larger: the reservoir keeps mostly the flood, the
    core-set keeps every topic, and what it keeps lies closer to every example the device saw."""
    runtime = client_runtime(RunConfig().replace(**{"base-model": "tiny", "quantisation": "none"}))
    model, tokenizer = runtime.model, runtime.base.tokenizer
    topics = load_topics()
    small, flood = sorted(topics, key=lambda name: len(topics[name]))[-4:-2], max(topics, key=lambda n: len(topics[n]))
    rounds = [list(topics[small[0]])[:12], list(topics[small[1]])[:12], list(topics[flood])[:150]]
    seen = [example for examples in rounds for example in examples]
    capacity = 16
    reservoir = ReplayBuffer(capacity, max_bytes=10**6, seed=0)
    coreset = ReplayBuffer(capacity, max_bytes=10**6, seed=0, select=k_centre_selection(model, tokenizer))
    for examples in rounds:
        reservoir.add(examples)
        coreset.add(examples)
    assert len(coreset.items) == capacity and coreset.seen == len(seen)
    features = base_embedding(model, tokenizer)(seen)
    where = {example: index for index, example in enumerate(seen)}
    radius = {name: coverage_radius(features, [where[e] for e in buffer.items])
              for name, buffer in (("reservoir", reservoir), ("k-centre", coreset))}
    assert radius["k-centre"] < 0.8 * radius["reservoir"]
    assert all(any(e in coreset.items for e in examples) for examples in rounds)  # every topic kept

    store = ClientStateStore(tmp_path)
    coreset.save(store, 3)
    again = ReplayBuffer.load(store, 4, capacity // 2, 10**6, 0, k_centre_selection(model, tokenizer))
    assert len(again.items) == capacity // 2 and set(again.items) <= set(coreset.items)
