"""A server round on real Flower messages: weighted deltas, rejection of bad replies, its rows; the ServerApp's
log."""

import logging
import subprocess
import sys

import numpy as np
import pytest
from flwr.app import Error, Message, MessageType, RecordDict
from plain_round import evaluation, new_global, plain_round

from stamen.shared.protocol import client_reply
from stamen.shared.run_folder import RunFolder
from stamen.shared.wire import encode_adapter

FP = "sha256:" + "ab" * 32
GLOBAL = {"l.lora_A": np.zeros((2, 4), np.float32), "l.lora_B": np.ones((4, 2), np.float32)}


def _reply(node, delta=None, examples=10, fingerprint=FP, error=None, **metrics):
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    if error:
        return Message(Error(code=1, reason=error), reply_to=sent)
    record = encode_adapter(delta, "float16") if delta is not None else None
    metrics = {"num-examples": examples, "train-loss": 1.0, **metrics}
    return Message(client_reply(metrics, fingerprint, f"c{node}", record), reply_to=sent)


def _delta(value):
    return {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}


pytestmark = pytest.mark.usefixtures("flower_task_identity")


@pytest.fixture
def rounds(tmp_path):
    return plain_round(tmp_path, GLOBAL, FP)


def test_new_global_is_the_example_weighted_mean_delta_added(rounds, tmp_path):
    new = new_global(rounds, [_reply(1, _delta(0.5), 10, **{"train-loss": 1.0}),
                              _reply(2, _delta(-0.25), 30, **{"train-loss": 3.0})])
    expected = (10 * 0.5 + 30 * -0.25) / 40  # = -0.0625
    np.testing.assert_allclose(new["l.lora_A"], 0.0 + expected)
    np.testing.assert_allclose(new["l.lora_B"], 1.0 + expected)
    evaluation(rounds, [])
    assert RunFolder(tmp_path).rows()[-1]["train_train_loss"] == pytest.approx((10 * 1.0 + 30 * 3.0) / 40)


def test_bad_replies_are_rejected_logged_and_the_round_goes_on(rounds, tmp_path, caplog):
    nan = _delta(0.5)
    nan["l.lora_A"][0, 0] = np.nan
    wrong_shape = {"l.lora_A": np.zeros((2, 5), np.float32), "l.lora_B": np.zeros((4, 2), np.float32)}
    replies = [
        _reply(1, _delta(0.5), 10),
        _reply(2, nan, 10),
        _reply(3, _delta(9.0), 10, fingerprint="sha256:" + "cd" * 32),
        _reply(4, wrong_shape, 10),
        _reply(5, error="client ran out of memory"),
        _reply(6, None, 10),
        _reply(7, _delta(9.0), 0),
    ]
    with caplog.at_level(logging.WARNING, logger="stamen.server.round_ledger"):
        new = new_global(rounds, replies)
    np.testing.assert_allclose(new["l.lora_A"], 0.5)
    rows = RunFolder(tmp_path).rows()
    verdicts = {row["node"]: row for row in rows}
    assert verdicts[1]["accepted"] is True
    reasons = {node: verdicts[node]["reason"] for node in range(2, 8)}
    assert "NaN/Inf" in reasons[2]
    assert "base model mismatch" in reasons[3]
    assert "shape" in reasons[4]
    assert "out of memory" in reasons[5]
    assert "carries no 'arrays'" in reasons[6]
    assert "positive" in reasons[7]
    assert caplog.text.count("rejected train reply") == 6


def test_when_every_update_is_bad_the_global_is_unchanged(rounds):
    new = new_global(rounds, [_reply(1, error="boom"), _reply(2, _delta(1.0), -5)])
    for name, value in GLOBAL.items():
        np.testing.assert_array_equal(new[name], value)


def test_uploaded_bytes_are_measured_from_the_actual_record(rounds, tmp_path):
    new_global(rounds, [_reply(1, _delta(0.5), 10)])
    row = RunFolder(tmp_path).rows()[0]
    record = encode_adapter(_delta(0.5), "float16")
    assert row["bytes_up"] == record.count_bytes()
    assert rounds.fold.schema.nbytes == 16 * 2


def test_round_zero_baseline_is_weighted_by_heldout_size(rounds, tmp_path):
    replies = [
        _reply(1, _delta(0.0), 100, **{"heldout-examples": 10, "initial-heldout-loss": 1.0}),
        _reply(2, _delta(0.0), 1, **{"heldout-examples": 30, "initial-heldout-loss": 2.0}),
    ]
    new_global(rounds, replies)
    evaluation(rounds, [])
    round_row = RunFolder(tmp_path).rows()[-1]
    assert round_row["kind"] == "round"
    assert round_row["initial_heldout_loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    assert "train_initial_heldout_loss" not in round_row


def test_central_dp_noises_the_released_adapter_by_z_c_over_n(tmp_path):
    """The round itself adds the noise (not only reports an epsilon): each accepted delta is clipped to C,
    and the new global spreads around the mean of the clipped deltas with std z * C / n."""
    from stamen.server.privacy import PrivacyEngine
    from stamen.shared.config import PrivacySpec

    big = {"w.lora_A": np.zeros((100, 200), np.float32)}
    clip, multiplier, clients = 0.5, 2.0, 4
    privacy = PrivacySpec(dp="central", dp_clip=clip, dp_noise_multiplier=multiplier)
    rounds = plain_round(tmp_path, big, FP, extensions=[PrivacyEngine(privacy, {"w.lora_A": (100, 200)})],
                         privacy=privacy)
    deltas = [{"w.lora_A": np.full((100, 200), 0.3 * (i + 1), np.float32)} for i in range(clients)]
    moved = new_global(rounds, [_reply(i + 1, d, 10) for i, d in enumerate(deltas)])["w.lora_A"]
    clipped_value = clip / np.sqrt(moved.size)  # every uniform delta, whatever its size, clipped to norm C
    assert moved.mean() == pytest.approx(clipped_value, abs=4 * multiplier * clip / clients / np.sqrt(moved.size))
    assert moved.std() == pytest.approx(multiplier * clip / clients, rel=0.03)


def test_flowers_waiting_line_passes_when_the_count_changes_not_every_second():
    from stamen.server.app import WaitingLinesThinned

    thinned = WaitingLinesThinned(interval=30.0)
    waiting = "Waiting for nodes to connect: %d connected (minimum required: %d)."

    def passes(*args: int, message: str = waiting) -> bool:
        return thinned.filter(logging.LogRecord("flwr", logging.INFO, "", 0, message, args, None))

    assert [passes(1, 3) for _ in range(5)] == [True, False, False, False, False]
    assert passes(2, 3) and not passes(2, 3)  # a new device connected: said once
    assert passes(message="round 1: sampled 3") and passes(message="round 1: sampled 3")  # other lines untouched


def test_a_serverapp_prints_each_flower_line_once_though_a_library_configured_the_root_logger():
    """Opacus calls ``logging.basicConfig`` on import; the streamed ServerApp log showed every Flower line twice."""
    program = """
import logging
import subprocess
import sys
import stamen.server.privacy, opacus.utils.module_utils  # the root handler a library installs on import
from stamen.server.app import _log_through_flower
_log_through_flower()
logging.getLogger("flwr").info("configure_train: Sampled 3 nodes (out of 3)")
logging.getLogger("stamen.server.round_ledger").info("round 1: 3 sampled")
"""
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert output.count("configure_train: Sampled 3 nodes") == 1, output
    assert output.count("round 1: 3 sampled") == 1, output
