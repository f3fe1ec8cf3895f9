"""The client's upload is exactly trained - received for each shared tensor, and never all zeros."""

import numpy as np
import pytest

from stamen.client.update import personal_part, shared_delta
from stamen.shared.training import NothingTrained

A, B, PERSONAL_B = "l.lora_A", "l.lora_B", "p.lora_B"


def _adapters():
    rng = np.random.default_rng(0)
    received = {A: rng.normal(size=(2, 6)).astype(np.float32), B: np.zeros((6, 2), np.float32)}
    trained = {A: received[A] + rng.normal(size=(2, 6)).astype(np.float32) * 0.1,
               B: rng.normal(size=(6, 2)).astype(np.float32), PERSONAL_B: np.ones((3, 2), np.float32)}
    return received, trained


def test_the_delta_is_trained_minus_received_for_exactly_the_tensors_the_server_sent():
    received, trained = _adapters()
    delta = shared_delta(trained, received)
    assert set(delta) == {A, B}
    np.testing.assert_array_equal(delta[A], trained[A] - received[A])
    np.testing.assert_array_equal(delta[B], trained[B])  # B starts at zero: its delta is the trained B
    assert delta[A].dtype == np.float32


def test_an_all_zero_delta_is_refused_but_one_changed_value_is_an_update():
    received, trained = _adapters()
    with pytest.raises(NothingTrained, match="all-zero delta"):
        shared_delta({**trained, A: received[A].copy(), B: received[B].copy()}, received)
    barely = {A: received[A].copy(), B: received[B].copy()}
    barely[B][-1, -1] = 1e-6  # a single value of the last tensor moved
    delta = shared_delta(barely, received)
    assert np.count_nonzero(delta[B]) == 1 and not delta[A].any()


def test_the_personal_part_is_what_the_server_did_not_send():
    received, trained = _adapters()
    personal = personal_part(trained, received)
    assert list(personal) == [PERSONAL_B]
    assert personal[PERSONAL_B] is trained[PERSONAL_B]
    assert personal_part({A: trained[A]}, received) == {}
