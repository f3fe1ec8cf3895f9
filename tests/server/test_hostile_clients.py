"""A client controls every byte it sends: nothing it sends may end a round, change the honest result
beyond its bounded weight, or make the server decode more than the adapter schema allows."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from plain_round import new_global, plain_round

from stamen.client.secure_aggregation import SecAggClient
from stamen.server.admission import UpdateRejected, admit_key_reply, admit_update
from stamen.server.federated_round import FederatedRound
from stamen.server.secure_aggregation import SecAggSettings, SecureAggregator
from stamen.server.secure_round import _apply, _vector
from stamen.shared.config import RunConfig
from stamen.shared.protocol import ARRAYS, CLIENT_INFO, CLIENT_NAME, FINGERPRINT, METRICS
from stamen.shared.run_folder import RunFolder
from stamen.shared.secagg_identity import DeviceIdentity, Roster
from stamen.shared.secagg_protocol import ENCRYPTION_KEY, MASK_KEY, PUBLIC_KEYS
from stamen.shared.wire import AdapterSchema, encode_adapter

FP = "sha256:" + "ab" * 32
GLOBAL = {"l.lora_A": np.zeros((2, 4), np.float32), "l.lora_B": np.ones((4, 2), np.float32)}
SCHEMA = AdapterSchema.from_state(GLOBAL, "float16")
SECURE = RunConfig().replace(**{"secure-aggregation": True})
ROSTER = Roster([DeviceIdentity.generate().fingerprint])

pytestmark = pytest.mark.usefixtures("flower_task_identity")
FUZZ_EXAMPLES = int(os.environ.get("STAMEN_FUZZ_EXAMPLES", "150"))  # mutation testing runs fewer per mutant


def _reply(node: int, value: float = 0.5, examples: float = 10, **metrics) -> Message:
    sent = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    delta = {k: np.full(v.shape, value, np.float32) for k, v in GLOBAL.items()}
    # a hostile client builds its records itself: client_reply's check of declared metrics is not on its path
    content = RecordDict({METRICS: MetricRecord({"num-examples": examples, "train-loss": 1.0, **metrics}),
                          CLIENT_INFO: ConfigRecord({FINGERPRINT: FP, CLIENT_NAME: f"c{node}"}),
                          ARRAYS: encode_adapter(delta, "float16")})
    return Message(content, reply_to=sent)


def _round(tmp_path, **options) -> FederatedRound:
    return plain_round(tmp_path, GLOBAL, FP, **options)


# -- arbitrary records ---------------------------------------------------------------------------------------------

_scalars = st.one_of(st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                     st.text(max_size=300), st.binary(max_size=300))
_config_values = st.one_of(_scalars, st.lists(st.integers(-(2**40), 2**40), max_size=5),
                           st.lists(st.text(max_size=5), max_size=5))
_metric_values = st.one_of(st.integers(-(2**62), 2**62), st.floats(allow_nan=True, allow_infinity=True),
                           st.lists(st.floats(allow_nan=False), max_size=5), st.lists(st.integers(-5, 5), max_size=5))
_keys = st.sampled_from(["num-examples", "train-loss", "client-name", "base-fingerprint", "l.lora_A", "l.lora_B",
                         "masked", "seed/1", "key/2", "1", "2", "3"]) | st.text(min_size=1, max_size=20)


@st.composite
def _arrays(draw) -> Array:
    dtype = draw(st.sampled_from(["float16", "float32", "float64", "int8", "uint32", "object", "<U3", "bogus"]))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    payload = draw(st.binary(max_size=400))
    if draw(st.booleans()):  # a well-formed payload of some array
        payload = Array(np.zeros(draw(st.integers(0, 20)), draw(st.sampled_from([np.float16, np.float32])))).data
    return Array(dtype=dtype, shape=shape, stype="numpy.ndarray", data=payload)


_records = st.one_of(
    st.dictionaries(_keys, _config_values, max_size=6).map(ConfigRecord),
    st.dictionaries(_keys, _metric_values, max_size=6).map(MetricRecord),
    st.dictionaries(_keys, _arrays(), max_size=4).map(ArrayRecord),
)
_record_names = st.sampled_from([ARRAYS, METRICS, CLIENT_INFO, PUBLIC_KEYS, "secagg-shares", "secagg-masked",
                                 "secagg-revealed", "control-delta"])


@st.composite
def _hostile_reply(draw) -> Message:
    """A valid reply with some of its records replaced, removed or added by arbitrary ones."""
    reply = _reply(3, draw(st.floats(-1, 1)), draw(st.floats(1, 100)))
    for _ in range(draw(st.integers(1, 3))):
        name = draw(_record_names)
        if name in reply.content and draw(st.booleans()):
            del reply.content[name]
        else:
            reply.content[name] = draw(_records)
    return reply


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hostile=_hostile_reply())
def test_a_round_survives_any_reply_and_the_honest_result_holds_unless_the_reply_is_a_valid_update(
        tmp_path_factory, hostile):
    honest = [_reply(1, 0.5, 10), _reply(2, -0.25, 30)]
    expected = new_global(_round(tmp_path_factory.mktemp("honest")), honest)
    folder = tmp_path_factory.mktemp("hostile")
    result = new_global(_round(folder), [*honest, hostile])
    verdict = next(row for row in RunFolder(folder).rows() if row.get("node") == 3)
    if not verdict["accepted"]:
        assert verdict["reason"]
        for name in expected:
            np.testing.assert_array_equal(result[name], expected[name])
    else:  # what got through is an update of the run's schema, at a bounded weight
        assert all(np.isfinite(value).all() for value in result.values())
        assert verdict["weight"] <= 4 * 30


@settings(max_examples=FUZZ_EXAMPLES, deadline=None)
@given(records=st.dictionaries(_record_names, _records, max_size=4))
def test_every_server_side_decoder_refuses_arbitrary_records_with_its_own_error(records):
    reply = Message(RecordDict(records), reply_to=Message(RecordDict(), dst_node_id=5, message_type=MessageType.TRAIN))
    for admit in (lambda: admit_update(reply, FP, SCHEMA, ("control-delta",)),
                  lambda: admit_key_reply(reply, FP, Roster(()), "run/train", 1),
                  lambda: admit_key_reply(reply, FP, ROSTER, "run/train", 1)):
        with contextlib.suppress(UpdateRejected):  # anything else escaping fails the test
            admit()


def _aggregator(nodes=(1, 2, 3)) -> tuple[SecureAggregator, dict[int, SecAggClient]]:
    clients = {node: SecAggClient(RecordDict(), node) for node in nodes}
    keys = {node: client.advertise(SECURE, "run", 1, np.zeros(5)) for node, client in clients.items()}
    return SecureAggregator("run", 1, keys, 5, SecAggSettings(), random.Random(0)), clients


@settings(max_examples=FUZZ_EXAMPLES * 2 // 3, deadline=None)
@given(shares=_records, masked=_records, revealed=_records)
def test_a_secure_round_drops_a_client_whose_stage_replies_are_arbitrary_and_sums_the_others(
        shares, masked, revealed):
    probe, _ = _aggregator()
    _apply(1, "share", 3, lambda: probe.add_shares(3, shares))  # refused or routed, never raised

    server, clients = _aggregator()
    for node, (info, peers) in server.share_requests().items():
        server.add_shares(node, clients[node].share_keys(info, peers))
    for node, (info, routed) in server.mask_requests().items():
        if node != 3:
            server.add_masked(node, clients[node].masked_input(info, routed))
    hostile = masked if isinstance(masked, ArrayRecord) else None
    assert not _apply(1, "mask", 3, lambda: server.add_masked(3, _vector(hostile, server.length, server.codec.dtype)))
    answers = {node: clients[node].unmask(info) for node, (info, _) in server.unmask_requests().items()}
    answers[3] = revealed  # dropped, node 3 still answers the unmasking, with arbitrary shares
    total = server.finish(answers)
    np.testing.assert_allclose(total, np.zeros(5), atol=server.codec.sum_error_bound)


# -- named defects --------------------------------------------------------------------------------------------------

def test_a_list_valued_metric_is_refused_and_the_round_goes_on(tmp_path):
    rounds = _round(tmp_path)
    result = new_global(rounds, [_reply(1, 0.5), _reply(2, 0.5, **{"train-loss": [1.0, 2.0]})])
    np.testing.assert_allclose(result["l.lora_A"], 0.5)
    refused = next(row for row in RunFolder(tmp_path).rows() if row.get("node") == 2)
    assert refused["reason"] == "metric 'train-loss' must be a finite number, got list"


def test_a_huge_integer_public_key_is_refused_without_allocating_it():
    reply = _reply(1)
    del reply.content[ARRAYS]  # stage 1 of a secure round sends keys instead of the update
    reply.content[PUBLIC_KEYS] = ConfigRecord({ENCRYPTION_KEY: 10**12, MASK_KEY: b"x" * 32})
    with pytest.raises(UpdateRejected, match="lacks two 32-byte public keys and a 32-byte seed commitment"):
        admit_key_reply(reply, FP, ROSTER, "run/train", 1)  # bytes(10**12) would try to allocate a terabyte


def test_an_oversized_upload_is_refused_before_its_payload_is_decoded(monkeypatch):
    reply = _reply(1)
    big = np.zeros(8_000_000, np.float16)  # 16 MB where the schema allows 32 values
    reply.content[ARRAYS] = ArrayRecord({
        "l.lora_A": Array(dtype="float16", shape=(2, 4), stype="numpy.ndarray", data=Array(big).data),
        "l.lora_B": reply.content[ARRAYS]["l.lora_B"],
    })
    monkeypatch.setattr(Array, "numpy", lambda self: pytest.fail("the oversized payload was decoded"))
    with pytest.raises(UpdateRejected, match=r"is \d+ bytes, more than the \d+ the adapter schema allows"):
        admit_update(reply, FP, SCHEMA, ())


def test_a_client_claiming_a_trillion_examples_weighs_at_most_four_times_the_median(tmp_path):
    honest = [_reply(node, 0.1, 10) for node in (1, 2, 3)]
    result = new_global(_round(tmp_path), [*honest, _reply(4, 1.0, 1e12)])
    expected = (3 * 10 * 0.1 + 40 * 1.0) / (3 * 10 + 40)  # capped at 4 x the median count of 10
    np.testing.assert_allclose(result["l.lora_A"], expected, rtol=1e-3)  # float16 on the wire; uncapped: 1.0
    row = next(row for row in RunFolder(tmp_path).rows() if row.get("node") == 4)
    assert row["weight_capped"] is True and row["weight"] == 40


def test_float16_extremes_at_an_absurd_weight_leave_the_global_adapter_finite(tmp_path):
    rounds = _round(tmp_path, max_client_weight=1e300)
    result = new_global(rounds, [_reply(1, 0.1, 10), _reply(2, 65504.0, 1e308)])
    assert all(np.isfinite(value).all() for value in result.values())
    assert next(row for row in RunFolder(tmp_path).rows() if row.get("node") == 2)["weight"] == 40.0


def test_the_weight_cap_is_four_times_the_lower_median_or_the_configured_one_below_it():
    from stamen.server.weight_cap import round_weight_cap

    assert round_weight_cap([10, 30, 1e12], 0.5) == 0.5  # any positive setting, even below one example
    assert round_weight_cap([10, 30, 1e12], 0.0) == 120.0
    assert round_weight_cap([10, 30, 1e12], 1000.0) == 120.0  # a configured cap above the median's lifts nothing
    assert round_weight_cap([10, 1e12], 0.0) == 40.0  # of two, the lower: the liar cannot set its own cap
    assert round_weight_cap([10, 30, 50, 1e12], 0.0) == 120.0
    assert round_weight_cap([], 0.0) == float("inf")


def test_with_two_clients_a_liar_claiming_a_trillion_examples_gets_at_most_four_fifths_of_the_round(tmp_path):
    """Issue: with min-clients = 2, one honest client and one claiming 1e12 examples, the global update was exactly
    the liar's (the cap was four times the median of two). The lower median caps the liar at 4 x 10 examples."""
    result = new_global(_round(tmp_path), [_reply(1, 0.1, 10), _reply(2, 1.0, 1e12)])
    expected = (10 * 0.1 + 40 * 1.0) / 50  # the liar's share: 4/5 = max_weight_share(2)
    np.testing.assert_allclose(result["l.lora_A"], expected, rtol=1e-3)


@settings(max_examples=200, deadline=None)
@given(weights=st.lists(st.floats(1e-3, 1e15), min_size=2, max_size=40), configured=st.sampled_from([0.0, 5.0, 1e9]))
def test_no_client_has_more_than_the_stated_share_of_a_plain_rounds_weight(weights, configured):
    from stamen.server.weight_cap import max_weight_share, round_weight_cap

    cap = round_weight_cap(weights, configured)
    capped = [min(weight, cap) for weight in weights]
    assert max(capped) / sum(capped) <= max_weight_share(len(weights)) + 1e-12


def test_a_secure_total_weight_is_accepted_exactly_up_to_its_bounds_and_refused_beyond():
    from stamen.server.weight_cap import SecureSumOutOfBounds, check_secure_total
    from stamen.shared.config import PrivacySpec

    privacy = PrivacySpec(secure_aggregation=True, secagg_max_weight=1000.0, secagg_min_weight=50.0)
    for total in (3 * 0.05 - 0.01, 3 * 1.0 + 0.01):  # the bounds, widened by the codec's tolerance
        check_secure_total(total, 3, privacy, tolerance=0.01)
    for total in (3 * 0.05 - 0.0101, 3.0101):
        with pytest.raises(SecureSumOutOfBounds, match=r"outside \[0.15, 3\] that 3 clients can send"):
            check_secure_total(total, 3, privacy, tolerance=0.01)
    dp = PrivacySpec(secure_aggregation=True, dp="distributed")
    with pytest.raises(SecureSumOutOfBounds, match=r"outside \[3, 3\]"):  # every client weighs 1 under DP
        check_secure_total(2.5, 3, dp, tolerance=0.0)


def test_metric_and_name_limits_hold_exactly_at_their_bounds():
    from stamen.server.admission import MAX_METRICS, MAX_TEXT_CHARS, admit_reply, client_name

    many = {f"m{i}": 1.0 for i in range(MAX_METRICS - 2)}  # with num-examples and train-loss: exactly the limit
    admit_reply(_reply(1, **many), FP, (ARRAYS,))
    with pytest.raises(UpdateRejected, match=f"carries {MAX_METRICS + 1} metrics, more than {MAX_METRICS}"):
        admit_reply(_reply(1, **many, extra=1.0), FP, (ARRAYS,))
    admit_reply(_reply(1, **{"x" * MAX_TEXT_CHARS: 1.0}), FP, (ARRAYS,))
    with pytest.raises(UpdateRejected, match=f"a metric name is longer than {MAX_TEXT_CHARS} characters"):
        admit_reply(_reply(1, **{"x" * (MAX_TEXT_CHARS + 1): 1.0}), FP, (ARRAYS,))
    named = _reply(1)
    named.content[CLIENT_INFO]["client-name"] = "n" * MAX_TEXT_CHARS
    assert client_name(named) == "n" * MAX_TEXT_CHARS
    named.content[CLIENT_INFO]["client-name"] = "n" * (MAX_TEXT_CHARS + 1)
    assert client_name(named) == "?"


def test_a_client_crafting_its_masked_input_moves_an_applied_coordinate_at_most_by_the_stated_bound():
    """Issue: one client of 10 added +4.9 to each coordinate of its masked input and pushed its weight coordinate to
    the lowest total the server accepts: the applied mean was 9.9 against 0.01 honest, where docs/privacy.md claimed
    at most 20x. What holds (docs/privacy.md, "Bounded influence"): a decoded coordinate lies within +-n (the codec's
    range) and the total weight is at least n x secagg-min-weight / secagg-max-weight, so any coordinate of the
    applied mean is at most secagg-value-range x secagg-max-weight / secagg-min-weight (20 by default) in size."""
    from stamen.server.weight_cap import check_secure_total
    from stamen.shared.config import PrivacySpec
    from stamen.shared.fixed_point import FixedPoint
    from stamen.shared.secagg_protocol import read_sum, update_vector

    privacy, n, values = PrivacySpec(secure_aggregation=True), 10, 32
    low, high = privacy.secagg_min_weight / privacy.secagg_max_weight, 1.0
    bound = 1.0 * high / low  # secagg-value-range 1

    def applied_mean(added: float) -> float:
        clients = {node: SecAggClient(RecordDict(), node) for node in range(1, n + 1)}
        vectors = {node: update_vector(np.full(values, 0.01), 0.3, 1.0) for node in clients}  # 300 examples each
        keys = {node: c.advertise(SECURE, "run", 1, vectors[node]) for node, c in clients.items()}
        server = SecureAggregator("run", 1, keys, values + 1, SecAggSettings(), random.Random(0))
        for node, (info, peers) in server.share_requests().items():
            server.add_shares(node, clients[node].share_keys(info, peers))
        codec = FixedPoint(1.0, n)
        crafted = np.append(np.full(values, added), low * n - 0.3 * (n - 1))  # the lowest total weight accepted
        for node, (info, shares) in server.mask_requests().items():
            masked = clients[node].masked_input(info, shares)
            if node == 1:  # the attacker's bytes: its own input swapped for the crafted one, inside the masks
                shift = np.round((crafted - vectors[node]) * codec.scale).astype(np.int64)
                masked = masked + shift.astype(codec.dtype)
            server.add_masked(node, masked)
        revealed = {node: clients[node].unmask(info) for node, (info, _) in server.unmask_requests().items()}
        total = server.finish(revealed)
        weighted, _, weight, _ = read_sum(total, 1.0, values)
        check_secure_total(weight, n, privacy, codec.sum_error_bound)  # in bounds: the server applies it
        return float(weighted.mean() / weight)

    assert applied_mean(4.9) == pytest.approx(9.85, abs=0.01)  # the 9.9
    largest = applied_mean(n - 0.3 * 0.01 * (n - 1) - 1e-3)  # as far as the codec's range lets the sum go
    assert 19.9 < largest <= bound
