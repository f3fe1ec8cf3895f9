"""Error feedback on a lossy wire: what 8 bits drop from one update is sent with the next."""

import numpy as np

from stamen.client.error_feedback import RESIDUAL, with_error_feedback
from stamen.client.state_store import ClientStateStore
from stamen.shared.wire import as_received


def test_received_updates_add_up_to_the_true_updates_minus_one_residual(tmp_path):
    rng = np.random.default_rng(0)
    deltas = [{"w": rng.normal(size=(64, 40)).astype(np.float32) * 1e-3} for _ in range(6)]
    received_sum = np.zeros((64, 40))
    plain_sum = np.zeros((64, 40))
    for server_round, delta in enumerate(deltas, start=1):
        store = ClientStateStore(tmp_path)  # a fresh object each round: the residual lives on disk
        sent = with_error_feedback(delta, "int8", store, server_round)
        received_sum += as_received(sent, "int8")["w"]
        plain_sum += as_received(delta, "int8")["w"]
    true_sum = sum(d["w"].astype(np.float64) for d in deltas)
    residual = ClientStateStore(tmp_path).load(RESIDUAL, len(deltas) + 1)["w"]
    np.testing.assert_allclose(received_sum + residual, true_sum, atol=1e-9)
    # with feedback the error of the sum is one round's quantisation error, without it they pile up
    assert np.abs(received_sum - true_sum).max() < 0.5 * np.abs(plain_sum - true_sum).max()


def test_lossless_wire_sends_the_delta_and_stores_nothing(tmp_path):
    delta = {"w": np.ones((3, 3), np.float32)}
    assert with_error_feedback(delta, "float16", ClientStateStore(tmp_path), 1) is delta
    assert not list(tmp_path.iterdir())


def test_the_hook_applies_error_feedback_to_the_round_delta_except_under_secure_aggregation(tmp_path):
    from types import SimpleNamespace

    from stamen.client.error_feedback import ErrorFeedback
    from stamen.shared.config import RunConfig

    secure = SimpleNamespace(config=RunConfig().replace(**{"secure-aggregation": True}))
    assert ErrorFeedback.start(secure) is None  # the masked sum is exact: nothing to feed back
    delta = {"w": np.linspace(-1e-3, 1e-3, 2048, dtype=np.float32).reshape(64, 32)}
    store = ClientStateStore(tmp_path)
    training_round = SimpleNamespace(config=RunConfig().replace(**{"wire-dtype": "int8"}), delta=delta,
                                     setup=SimpleNamespace(store=store, server_round=3))
    hook = ErrorFeedback.start(training_round)
    hook.after_training(training_round)
    expected = with_error_feedback(delta, "int8", ClientStateStore(tmp_path / "reference"), 3)
    np.testing.assert_array_equal(training_round.delta["w"], expected["w"])
    assert ClientStateStore(tmp_path).load(RESIDUAL, 4) is not None  # this round's residual, kept for round 4
