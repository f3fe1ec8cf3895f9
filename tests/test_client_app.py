"""The ClientApp on real Flower messages, in-process: what it sends, and what it refuses."""

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict

from stamen.client.app import app as client_app
from stamen.shared.base_model import load_base
from stamen.shared.adapters import adapter_state, attach_adapter
from stamen.shared.config import RunConfig
from stamen.shared.fingerprint import BaseMismatchError
from stamen.shared.protocol import ARRAYS, CLIENT_INFO, CONFIG, FINGERPRINT, METRICS, SERVER_ROUND, round_config
from stamen.shared.wire import AdapterSchema, decode_adapter, encode_adapter

CONFIG_TINY = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "local-steps": 2, "seed": 0})


@pytest.fixture(autouse=True)
def flower_task_identity():
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


@pytest.fixture(scope="module")
def server_view():
    base = load_base("tiny", quantisation="none")
    initial = {k: v.numpy() for k, v in adapter_state(attach_adapter(base.model, CONFIG_TINY.adapter, 0)).items()}
    return base.fingerprint, initial, AdapterSchema.from_state(initial, "float16")


def _message(kind, fingerprint, adapter):
    config = round_config(CONFIG_TINY, fingerprint)
    config[SERVER_ROUND] = 1
    content = RecordDict({ARRAYS: encode_adapter(adapter, "float16"), CONFIG: config})
    return Message(content, dst_node_id=7, message_type=kind)


def _context():
    return Context(run_id=1, node_id=7, node_config={"partition-id": 0, "num-partitions": 3}, state=RecordDict(), run_config={})


def test_train_reply_is_a_delta_with_exactly_the_adapter(server_view):
    fingerprint, initial, schema = server_view
    reply = client_app(_message(MessageType.TRAIN, fingerprint, initial), _context())
    assert not reply.has_error()
    content = reply.content
    assert set(content.array_records) == {ARRAYS}
    assert set(content[ARRAYS]) == set(schema.shapes)
    delta = decode_adapter(content[ARRAYS], schema)
    assert any(np.abs(d).max() > 0 for d in delta.values())
    payload = sum(content[ARRAYS][k].numpy().nbytes for k in content[ARRAYS])
    assert payload == schema.nbytes
    assert content[METRICS]["num-examples"] > 0
    assert content[METRICS]["initial-heldout-loss"] > 0  # round 1 carries the round-0 baseline
    assert content[CLIENT_INFO][FINGERPRINT] == fingerprint


def test_evaluate_reply_carries_losses_and_no_arrays(server_view):
    fingerprint, initial, _ = server_view
    reply = client_app(_message(MessageType.EVALUATE, fingerprint, initial), _context())
    metrics = reply.content[METRICS]
    assert not reply.content.array_records
    assert metrics["heldout-loss"] > 0 and metrics["base-domain-loss"] > 0


def test_client_refuses_a_server_on_another_base(server_view):
    _, initial, _ = server_view
    with pytest.raises(BaseMismatchError, match="mismatch"):
        client_app(_message(MessageType.TRAIN, "sha256:" + "00" * 32, initial), _context())
