"""The reservoir replay buffer: an unbiased sample, bounded, and the same after a restart from disk."""

import numpy as np
from scipy import stats

from stamen.client.replay_buffer import ReservoirBuffer, example_bytes
from stamen.client.state_store import ClientStateStore
from stamen.shared.examples import Example


def _stream(n, width=10):
    return [Example(response=f"answer {i:0{width}d}", prompt=f"question {i:04d}") for i in range(n)]


def test_every_example_of_the_stream_is_equally_likely_to_be_kept():
    stream, capacity, trials = _stream(200), 20, 2000
    kept = np.zeros(len(stream))
    for seed in range(trials):
        buffer = ReservoirBuffer(capacity, max_bytes=10**6, seed=seed)
        buffer.add(stream[:70])  # in two rounds, as a device adds each round's examples
        buffer.add(stream[70:])
        kept[[int(e.response.split()[1]) for e in buffer.items]] += 1
    assert kept.sum() == capacity * trials
    # inclusion probability capacity/n for every position: early and late examples alike
    by_decile = kept.reshape(10, 20).sum(axis=1)
    assert stats.chisquare(by_decile).pvalue > 0.001
    assert abs(kept[:20].mean() - kept[-20:].mean()) < 0.2 * capacity * trials / len(stream)


def test_a_restarted_device_continues_the_same_sample(tmp_path):
    stream = _stream(300)
    uninterrupted = ReservoirBuffer(25, max_bytes=10**6, seed=3)
    for round_examples in (stream[:100], stream[100:200], stream[200:]):
        uninterrupted.add(round_examples)
    first = ReservoirBuffer(25, max_bytes=10**6, seed=3)
    first.add(stream[:100])
    first.save(ClientStateStore(tmp_path), server_round=1)
    for server_round, examples in ((2, stream[100:200]), (3, stream[200:])):
        restored = ReservoirBuffer.load(ClientStateStore(tmp_path), server_round, 25, 10**6, seed=3)
        restored.add(examples)
        restored.save(ClientStateStore(tmp_path), server_round)
    final = ReservoirBuffer.load(ClientStateStore(tmp_path), 4, 25, 10**6, seed=3)
    assert final.items == uninterrupted.items and final.seen == 300


def test_the_byte_bound_holds_and_shrinks_the_capacity():
    stream = _stream(500)
    per_example = example_bytes(stream[0])
    buffer = ReservoirBuffer(100, max_bytes=30 * per_example, seed=0)
    buffer.add(stream)
    assert buffer.nbytes <= 30 * per_example
    assert len(buffer.items) == buffer.capacity == 30
    assert len({e.response for e in buffer.items}) == 30


def test_a_smaller_configured_capacity_applies_on_load(tmp_path):
    buffer = ReservoirBuffer(50, max_bytes=10**6, seed=1)
    buffer.add(_stream(80))
    buffer.save(ClientStateStore(tmp_path), 1)
    smaller = ReservoirBuffer.load(ClientStateStore(tmp_path), 2, capacity=10, max_bytes=10**6, seed=1)
    assert len(smaller.items) == 10 and set(smaller.items) <= set(buffer.items)


def test_every_replay_source_the_config_names_is_registered_on_the_device():
    from stamen.client.replay import REPLAY_SOURCE_CLASSES
    from stamen.shared.config import REPLAY_SOURCES

    assert set(REPLAY_SOURCE_CLASSES) == set(REPLAY_SOURCES)
    assert {name for name, source in REPLAY_SOURCE_CLASSES.items() if source.uses_buffer} == {"buffer", "ewc"}
