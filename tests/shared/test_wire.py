import numpy as np
import pytest
import torch
from flwr.app import Array, ConfigRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from stamen.shared.wire import AdapterSchema, AdapterValidationError, decode_adapter, encode_adapter


def _state():
    rng = np.random.default_rng(0)
    return {
        "a.lora_A": rng.normal(size=(4, 16)).astype(np.float32),
        "a.lora_B": rng.normal(size=(16, 4)).astype(np.float32),
    }


def test_wire_bytes_are_the_adapter_bytes_in_the_wire_dtype():
    state = _state()
    for dtype, itemsize in (("float16", 2), ("float32", 4)):
        schema = AdapterSchema.from_state(state, dtype)
        record = encode_adapter(state, dtype)
        payload = sum(record[k].numpy().nbytes for k in record)
        assert payload == schema.nbytes == 128 * itemsize
        assert all(record[k].dtype == dtype for k in record)
        # what Flower counts on the wire = payload + a fixed .npy header and the key per tensor
        overhead = record.count_bytes() - payload
        assert 0 < overhead <= len(record) * 160


def test_bfloat16_tensors_are_cast_before_the_wire():
    state = {"w": torch.randn(3, 5, dtype=torch.bfloat16)}
    record = encode_adapter(state, "float16")
    decoded = decode_adapter(record, AdapterSchema.from_state(state, "float16"))
    assert torch.allclose(torch.from_numpy(decoded["w"]), state["w"].float(), atol=1e-2)


@settings(max_examples=40, deadline=None)
@given(
    shapes=st.lists(st.tuples(st.integers(1, 8), st.integers(1, 8)), min_size=1, max_size=4),
    scale=st.floats(1e-3, 1e3),
)
def test_round_trip_is_within_fp16_precision(shapes, scale):
    rng = np.random.default_rng(1)
    state = {f"t{i}": (rng.normal(size=s) * scale).astype(np.float32) for i, s in enumerate(shapes)}
    schema = AdapterSchema.from_state(state, "float16")
    decoded = decode_adapter(encode_adapter(state, "float16"), schema)
    for name, value in state.items():
        # fp16 keeps ~11 significant bits; below 6e-5 its spacing is a fixed 6e-8
        np.testing.assert_allclose(decoded[name], value, rtol=1e-3, atol=3e-8)


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda r: r.pop("a.lora_B"), "missing"),
        (lambda r: r.__setitem__("extra", Array(np.zeros(2, np.float16))), "unexpected"),
        (lambda r: r.__setitem__("a.lora_A", Array(np.zeros((4, 15), np.float16))), "shape"),
        (lambda r: r.__setitem__("a.lora_A", Array(np.zeros((4, 16), np.float32))), "dtype"),
        (lambda r: r.__setitem__("a.lora_A", Array(np.full((4, 16), np.nan, np.float16))), "64 NaN/Inf"),
        (lambda r: r.__setitem__("a.lora_B", Array(np.full((16, 4), np.inf, np.float16))), "NaN/Inf"),
    ],
)
def test_malformed_adapters_are_refused_with_the_reason(corrupt, message):
    state = _state()
    record = encode_adapter(state, "float16")
    corrupt(record)
    with pytest.raises(AdapterValidationError, match=message):
        decode_adapter(record, AdapterSchema.from_state(state, "float16"))


def test_payload_that_lies_about_its_dtype_is_refused():
    state = _state()
    record = encode_adapter(state, "float16")
    honest = Array(np.zeros((4, 16), np.float32))
    record["a.lora_A"] = Array(dtype="float16", shape=(4, 16), stype=honest.stype, data=honest.data)
    with pytest.raises(AdapterValidationError, match="payload"):
        decode_adapter(record, AdapterSchema.from_state(state, "float16"))


def test_garbage_payload_and_wrong_record_type_are_refused():
    state = _state()
    record = encode_adapter(state, "float16")
    record["a.lora_A"] = Array(dtype="float16", shape=(4, 16), stype="numpy.ndarray", data=b"not an array")
    with pytest.raises(AdapterValidationError, match="readable"):
        decode_adapter(record, AdapterSchema.from_state(state, "float16"))
    with pytest.raises(AdapterValidationError, match="ArrayRecord"):
        decode_adapter(ConfigRecord({"x": 1}), AdapterSchema.from_state(state, "float16"))


def test_int8_wire_is_one_byte_per_value_plus_a_scale_per_block_and_decodes_close():
    rng = np.random.default_rng(2)
    state = {
        "a.lora_A": rng.normal(size=(8, 300)).astype(np.float32) * 1e-3,
        "b": rng.normal(size=(5,)).astype(np.float32),
    }
    schema = AdapterSchema.from_state(state, "int8")
    record = encode_adapter(state, "int8")
    assert set(record) == {"a.lora_A", "a.lora_A#absmax", "b", "b#absmax"}
    payload = sum(record[k].numpy().nbytes for k in record)
    assert payload == schema.nbytes == 2400 + 5 + 4 * (10 + 1)  # 2400 values -> 10 blocks of 256
    decoded = decode_adapter(record, schema)
    for name, value in state.items():
        assert np.abs(decoded[name] - value).max() <= 0.02 * np.abs(value).max()
        assert not np.array_equal(decoded[name], value)  # lossy, unlike fp32


def test_int8_wire_refuses_bad_block_scales():
    state = _state()
    schema = AdapterSchema.from_state(state, "int8")
    record = encode_adapter(state, "int8")
    record["a.lora_B#absmax"] = Array(np.array([np.nan], np.float32))
    with pytest.raises(AdapterValidationError, match=r"a.lora_B#absmax has 1 NaN/Inf"):
        decode_adapter(record, schema)
    record.pop("a.lora_B#absmax")
    with pytest.raises(AdapterValidationError, match="1 missing"):
        decode_adapter(record, schema)


def test_int8_wire_takes_float64_arrays_as_error_feedback_produces_them():
    rng = np.random.default_rng(3)
    state = {"w": rng.normal(size=(4, 300)) * 1e-3}  # float64, as delta + residual can be
    decoded = decode_adapter(encode_adapter(state, "int8"), AdapterSchema.from_state(state, "int8"))
    assert decoded["w"].dtype == np.float32 and decoded["w"].shape == (4, 300)
    assert np.abs(decoded["w"] - state["w"]).max() <= 0.02 * np.abs(state["w"]).max()
