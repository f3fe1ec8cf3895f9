"""The server admits only replies that pass every check, and names the check a refused one failed."""

import numpy as np
import pytest
from flwr.app import ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict

from stamen.server.admission import UpdateRejected, admit_key_reply, admit_reply, admit_update, client_name
from stamen.shared.protocol import ARRAYS, CLIENT_INFO, METRICS, client_reply
from stamen.shared.secagg_identity import DeviceIdentity, Roster, keys_statement
from stamen.shared.secagg_protocol import (
    ENCRYPTION_KEY,
    IDENTITY,
    KEY_SIGNATURE,
    MASK_KEY,
    METRIC_NAMES,
    PUBLIC_KEYS,
    SEED_COMMITMENT,
)
from stamen.shared.wire import AdapterSchema, encode_adapter

FP = "sha256:" + "ab" * 32
DELTA = {"l.lora_A": np.full((2, 4), 0.5, np.float32), "l.lora_B": np.full((4, 2), -0.25, np.float32)}
SCHEMA = AdapterSchema.from_state(DELTA, "float16")
CONTROL = "control-delta"
NO_ROSTER, SESSION = Roster(()), "run/train"

pytestmark = pytest.mark.usefixtures("flower_task_identity")


def _reply(delta=DELTA, examples=10, fingerprint=FP, name="c1", **records):
    content = client_reply({"num-examples": examples}, fingerprint, name,
                           encode_adapter(delta, "float16") if delta is not None else None)
    for key, value in records.items():
        content[key] = value
    return Message(content, reply_to=Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN))


def test_a_valid_reply_becomes_the_update_with_its_delta_weight_name_and_extras():
    update = admit_update(_reply(examples=30, **{CONTROL: encode_adapter(DELTA, "float16")}), FP, SCHEMA, (CONTROL,))
    assert (update.client, update.weight) == ("c1", 30.0)
    for name, value in DELTA.items():
        np.testing.assert_array_equal(update.delta[name], value)
        np.testing.assert_array_equal(update.extras[CONTROL][name], value)


@pytest.mark.parametrize("examples", [0, -3, float("nan"), float("inf"), None])
def test_an_example_count_that_is_not_a_positive_number_is_refused(examples):
    reply = _reply(examples=1)
    if examples is None:
        del reply.content[METRICS]["num-examples"]
    else:
        reply.content[METRICS]["num-examples"] = examples
    with pytest.raises(UpdateRejected, match=r"'num-examples' must be a (positive|finite) number"):
        admit_reply(reply, FP, (ARRAYS,))


def test_the_smallest_positive_example_count_is_admitted():
    admit_reply(_reply(examples=1e-9), FP, (ARRAYS,))


def test_an_error_reply_is_refused_with_the_clients_reason():
    error = Message(Error(code=1, reason="out of memory"),
                    reply_to=Message(RecordDict(), dst_node_id=1, message_type=MessageType.TRAIN))
    with pytest.raises(UpdateRejected, match="client reported an error: out of memory"):
        admit_reply(error, FP, (ARRAYS,))
    assert client_name(error) == "?"


@pytest.mark.parametrize("missing", [CLIENT_INFO, METRICS])
def test_a_reply_without_its_info_or_metrics_is_refused(missing):
    reply = _reply()
    del reply.content[missing]
    with pytest.raises(UpdateRejected, match="lacks the client info or metrics"):
        admit_reply(reply, FP, (ARRAYS,))


def test_a_reply_from_another_base_or_without_one_is_refused():
    with pytest.raises(UpdateRejected, match=r"base model mismatch \(server vs client\): .* got cdcdcdcdcdcd"):
        admit_reply(_reply(fingerprint="sha256:" + "cd" * 32), FP, (ARRAYS,))
    reply = _reply()
    reply.content[CLIENT_INFO] = ConfigRecord({"client-name": "c1"})
    with pytest.raises(UpdateRejected, match="carries no base fingerprint"):
        admit_reply(reply, FP, (ARRAYS,))


def test_a_train_reply_missing_its_delta_or_an_extra_upload_is_refused():
    with pytest.raises(UpdateRejected, match="carries no 'arrays' record"):
        admit_update(_reply(delta=None), FP, SCHEMA, ())
    with pytest.raises(UpdateRejected, match=f"carries no '{CONTROL}' record"):
        admit_update(_reply(), FP, SCHEMA, (CONTROL,))


def test_a_malformed_delta_or_extra_upload_is_refused_with_the_wire_reason():
    nan = {**DELTA, "l.lora_A": np.full((2, 4), np.nan, np.float32)}
    with pytest.raises(UpdateRejected, match=r"malformed adapter delta: .*NaN/Inf"):
        admit_update(_reply(delta=nan), FP, SCHEMA, ())
    wrong = {**DELTA, "l.lora_B": np.zeros((4, 3), np.float32)}
    with pytest.raises(UpdateRejected, match=r"malformed adapter delta: .*shape"):
        admit_update(_reply(**{CONTROL: encode_adapter(wrong, "float16")}), FP, SCHEMA, (CONTROL,))


def test_a_client_without_a_name_is_named_by_a_question_mark():
    reply = _reply()
    reply.content[CLIENT_INFO] = ConfigRecord({"fingerprint": FP})
    assert client_name(reply) == "?"
    assert client_name(_reply(name="alice")) == "alice"


@pytest.mark.parametrize("keys, admitted", [
    ({ENCRYPTION_KEY: b"e" * 32, MASK_KEY: b"m" * 32, SEED_COMMITMENT: b"s" * 32}, True),
    ({ENCRYPTION_KEY: b"e" * 32, MASK_KEY: b"m" * 31, SEED_COMMITMENT: b"s" * 32}, False),
    ({ENCRYPTION_KEY: b"e" * 33, MASK_KEY: b"m" * 32, SEED_COMMITMENT: b"s" * 32}, False),
    ({ENCRYPTION_KEY: b"e" * 32, MASK_KEY: b"m" * 32, SEED_COMMITMENT: b"s" * 31}, False),
    ({ENCRYPTION_KEY: b"e" * 32, MASK_KEY: b"m" * 32}, False),
    (None, False),
])
def test_a_secure_round_reply_must_carry_two_32_byte_public_keys(keys, admitted):
    reply = _reply(delta=None, **{METRIC_NAMES: ConfigRecord({"names": ["train-loss"]})})
    if keys is not None:
        reply.content[PUBLIC_KEYS] = ConfigRecord(keys)
    if admitted:
        admit_key_reply(reply, FP, NO_ROSTER, SESSION, 1)
    else:
        with pytest.raises(UpdateRejected, match="two 32-byte public keys and a 32-byte seed commitment"):
            admit_key_reply(reply, FP, NO_ROSTER, SESSION, 1)
    with pytest.raises(UpdateRejected, match="base model mismatch"):
        admit_key_reply(_reply(delta=None, fingerprint="sha256:" + "cd" * 32), FP, NO_ROSTER, SESSION, 1)


@pytest.mark.parametrize("names", [None, "train-loss", ["x"] * 65, ["a" * 201], [b"train-loss"]])
def test_a_secure_round_reply_must_name_at_most_64_short_metrics(names):
    reply = _reply(delta=None, **{PUBLIC_KEYS: ConfigRecord({ENCRYPTION_KEY: b"e" * 32, MASK_KEY: b"m" * 32,
                                                             SEED_COMMITMENT: b"s" * 32})})
    if names is not None:
        reply.content[METRIC_NAMES] = ConfigRecord({"names": names})
    with pytest.raises(UpdateRejected, match="a list of at most 64 metric names of at most 200 characters"):
        admit_key_reply(reply, FP, NO_ROSTER, SESSION, 1)
    reply.content[METRIC_NAMES] = ConfigRecord({"names": ["x"] * 64})
    admit_key_reply(reply, FP, NO_ROSTER, SESSION, 1)


def test_under_a_roster_the_server_admits_only_keys_a_listed_device_signed_for_this_node_and_round():
    """The server checks signed keys itself, so one client's bad keys drop that client, not every honest device
    that would refuse them in its peer list."""
    device, stranger = DeviceIdentity.generate(), DeviceIdentity.generate()
    roster = Roster([device.fingerprint])

    def keys(identity: DeviceIdentity, node: int = 1, server_round: int = 1) -> ConfigRecord:
        encryption, mask = b"e" * 32, b"m" * 32
        commitment = b"s" * 32
        return ConfigRecord({ENCRYPTION_KEY: encryption, MASK_KEY: mask, SEED_COMMITMENT: commitment,
                             IDENTITY: identity.public,
                             KEY_SIGNATURE: identity.sign(keys_statement(SESSION, server_round, node, encryption,
                                                                         mask, commitment))})

    def reply(record: ConfigRecord) -> Message:
        return _reply(delta=None, **{METRIC_NAMES: ConfigRecord({"names": []}), PUBLIC_KEYS: record})

    assert admit_key_reply(reply(keys(device)), FP, roster, SESSION, 1) == device.fingerprint
    unsigned = keys(device)
    del unsigned[KEY_SIGNATURE]
    for record, reason in ((keys(stranger), "is not on the run's roster"), (keys(device, node=2), "does not verify"),
                           (keys(device, server_round=2), "does not verify"), (unsigned, "must be bytes")):
        with pytest.raises(UpdateRejected, match=f"keys not signed by a roster device: .*{reason}"):
            admit_key_reply(reply(record), FP, roster, SESSION, 1)


def test_a_reply_with_records_nobody_asked_for_is_refused():
    reply = _reply()
    reply.content["secagg-shares"] = MetricRecord({"train-loss": [1.0, 2.0]})  # would be averaged with the metrics
    with pytest.raises(UpdateRejected, match=r"unexpected records \['secagg-shares'\]"):
        admit_update(reply, FP, SCHEMA, ())
