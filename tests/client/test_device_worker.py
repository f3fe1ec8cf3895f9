"""A deployed device's messages go to one worker process that keeps the base loaded (client/device/worker.py)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import pytest
from flwr.app import ConfigRecord, Context, Error, Message, MessageType, MetricRecord, RecordDict

from stamen.client.device.log import describe, is_round_line
from stamen.client.device.worker import WORKER_ADDRESS, WORKER_KEY, forwarding_app, start_worker
from stamen.client.secure_aggregation import STATE
from stamen.shared.adapters import adapter_state, attach_adapter, shared_state
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.flower_tools import flower_environment, free_port
from stamen.shared.process_guard import stop_tree
from stamen.shared.protocol import ARRAYS, CONFIG, METRICS, NUM_EXAMPLES, SERVER_ROUND, round_config
from stamen.shared.secagg_protocol import MASK_STAGE, METRIC_NAMES, PUBLIC_KEYS, SECAGG, StageInfo
from stamen.shared.wire import encode_adapter

pytestmark = pytest.mark.usefixtures("flower_task_identity")
DEVICE_CONFIG = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "local-steps": 2,
                                 "secure-aggregation": True})


def _message(kind: str, fingerprint: str, adapter: dict) -> Message:
    instruction: ConfigRecord = round_config(DEVICE_CONFIG, fingerprint)
    instruction[SERVER_ROUND] = 1
    return Message(RecordDict({ARRAYS: encode_adapter(adapter, "float16"), CONFIG: instruction}), dst_node_id=7,
                   message_type=kind)


def test_messages_reach_the_devices_worker_their_state_comes_back_and_strangers_hold_nothing_up(tmp_path, monkeypatch):
    data = tmp_path / "device.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"question {i}?", "response": f"answer number {i}."}) + "\n"
                            for i in range(40)))
    node = {"data-path": str(data), "state-dir": str(tmp_path / "state"), "client-name": "worker-test"}
    base = load_base("tiny", quantisation="none")
    initial = {k: v.numpy() for k, v in shared_state(adapter_state(attach_adapter(base.model, DEVICE_CONFIG.adapter,
                                                                                    DEVICE_CONFIG.seed)),
                                                      DEVICE_CONFIG.adapter).items()}
    port = free_port()
    worker = start_worker(tmp_path, port, flower_environment())
    try:
        monkeypatch.setenv(WORKER_ADDRESS, f"127.0.0.1:{port}")
        monkeypatch.setenv(WORKER_KEY, str(tmp_path / "worker.key"))
        app = forwarding_app()
        context = Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={})
        trained = app(_message(MessageType.TRAIN, base.fingerprint, initial), context)
        assert PUBLIC_KEYS in trained.content and dict(trained.content[METRICS]) == {NUM_EXAMPLES: 1}
        assert STATE in context.state  # the secure round's secrets came back for the next stage's process
        assert (tmp_path / "worker.key").stat().st_mode & 0o077 == 0  # the key is the owner's alone

        with pytest.raises(AuthenticationError):
            Client(("127.0.0.1", port), authkey=b"not this device's key" * 2)
        # a local process that connects and says nothing does not hold up the next message (issue: the worker's one
        # thread waited on its handshake with no timeout)
        silent = socket.create_connection(("127.0.0.1", port))
        evaluated = app(_message(MessageType.EVALUATE, base.fingerprint, initial),
                        Context(run_id=1, node_id=7, node_config=node, state=RecordDict(), run_config={}))
        assert "heldout-loss" in evaluated.content[METRIC_NAMES]["names"]  # the worker served on after the stranger
        silent.close()
    finally:
        stop_tree(worker.pid)
        worker.wait()


def test_a_devices_per_message_process_imports_no_torch():
    """Flower starts a process per message on a device; it only forwards to the worker, so it must start fast."""
    program = "import sys, stamen.client.app; assert 'torch' not in sys.modules"
    environment = {**flower_environment(), WORKER_ADDRESS: "127.0.0.1:1", WORKER_KEY: "/nonexistent"}
    result = subprocess.run([sys.executable, "-c", program], env=environment, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_device_line_names_the_round_and_secure_stage_and_shows_steps_and_loss():
    instruction: ConfigRecord = round_config(DEVICE_CONFIG, "f" * 64)
    instruction[SERVER_ROUND] = 3
    train = Message(RecordDict({CONFIG: instruction}), dst_node_id=7, message_type=MessageType.TRAIN)
    reply = Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 5, "train-steps": 4, "train-loss": 2.5})}),
                    reply_to=train)
    assert describe(train, reply, 1.25).startswith("round 3 train: train-steps 4, train-loss 2.5, ")
    assert describe(train, reply, 1.25).endswith(" bytes up, 1.2 s")
    stage = StageInfo("run", 3, MASK_STAGE, num_clients=3, threshold=2, point=1, modulus_bits=32)
    masked = Message(RecordDict({SECAGG: stage.to_record()}), dst_node_id=7, message_type=MessageType.TRAIN)
    assert describe(masked, Message(RecordDict(), reply_to=masked), 0.5).startswith(f"round 3 train {MASK_STAGE}: ")


def test_a_device_shows_one_line_per_round_it_trains_in_and_every_error_the_rest_only_when_verbose():
    instruction: ConfigRecord = round_config(DEVICE_CONFIG, "f" * 64)
    train = Message(RecordDict({CONFIG: instruction}), dst_node_id=7, message_type=MessageType.TRAIN)
    evaluate = Message(RecordDict({CONFIG: instruction}), dst_node_id=7, message_type=MessageType.EVALUATE)
    plain = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 5, "train-steps": 4})})
    assert is_round_line(train, Message(plain, reply_to=train))
    assert not is_round_line(evaluate, Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 5})}),
                                               reply_to=evaluate))
    keys = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 1}), PUBLIC_KEYS: ConfigRecord({"point": 1})})
    assert not is_round_line(train, Message(keys, reply_to=train))  # the secure mod says that round's line
    stage = StageInfo("run", 3, MASK_STAGE, num_clients=3, threshold=2, point=1, modulus_bits=32)
    masked = Message(RecordDict({SECAGG: stage.to_record()}), dst_node_id=7, message_type=MessageType.TRAIN)
    assert not is_round_line(masked, Message(RecordDict(), reply_to=masked))
    assert is_round_line(masked, Message(Error(code=0, reason="refused"), reply_to=masked))
