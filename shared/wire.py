"""Adapter tensors on the wire: Flower ``ArrayRecord`` in a declared dtype, validated on receipt.

Wire dtypes: ``float16`` (default), ``float32``, and ``int8`` (8-bit blockwise codes plus a
float32 absmax per block under ``<name>#absmax``, see :mod:`.blockwise_int8`).
Everything received is checked before use: exact key set, shapes, declared and
actual dtype, and finiteness. A bad update raises :class:`AdapterValidationError`
naming the problem, so the receiver can reject it and carry on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from flwr.app import Array, ArrayRecord

from . import blockwise_int8

WIRE_NUMPY_DTYPES = {"float16": np.dtype(np.float16), "float32": np.dtype(np.float32), "int8": np.dtype(np.uint8)}
LOSSY_WIRE_DTYPES = ("int8",)  # clients send these with error feedback
ABSMAX_SUFFIX = "#absmax"


class AdapterValidationError(ValueError):
    """A received adapter does not match what this federation expects."""


@dataclass(frozen=True)
class AdapterSchema:
    """The names, shapes and wire dtype every adapter update must have."""

    shapes: Mapping[str, tuple[int, ...]]
    wire_dtype: str

    @classmethod
    def from_state(cls, state: Mapping[str, torch.Tensor | np.ndarray], wire_dtype: str) -> AdapterSchema:
        return cls({name: tuple(t.shape) for name, t in state.items()}, wire_dtype)

    @property
    def num_values(self) -> int:
        return sum(int(np.prod(shape)) for shape in self.shapes.values())

    @property
    def nbytes(self) -> int:
        """Payload bytes of one adapter in the wire dtype (without array headers)."""
        payload = self.num_values * WIRE_NUMPY_DTYPES[self.wire_dtype].itemsize
        if self.wire_dtype == "int8":
            payload += 4 * sum(blockwise_int8.num_blocks(int(np.prod(s))) for s in self.shapes.values())
        return payload

    def wire_keys(self) -> set[str]:
        """The keys of an encoded adapter: one per tensor, plus its block scales in ``int8``."""
        if self.wire_dtype == "int8":
            return {*self.shapes, *(name + ABSMAX_SUFFIX for name in self.shapes)}
        return set(self.shapes)

    def flatten(self, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
        """One float64 vector in schema order (secure aggregation masks vectors)."""
        return np.concatenate([np.asarray(arrays[name], dtype=np.float64).ravel() for name in self.shapes])

    def unflatten(self, vector: np.ndarray) -> dict[str, np.ndarray]:
        """The inverse of :meth:`flatten`, as float32 arrays."""
        if vector.size != self.num_values:
            raise AdapterValidationError(f"expected {self.num_values} values, got {vector.size}")
        arrays, start = {}, 0
        for name, shape in self.shapes.items():
            size = int(np.prod(shape))
            arrays[name] = vector[start:start + size].reshape(shape).astype(np.float32)
            start += size
        return arrays


def encode_adapter(state: Mapping[str, torch.Tensor | np.ndarray], wire_dtype: str) -> ArrayRecord:
    """Adapter tensors as an ``ArrayRecord`` in ``wire_dtype`` (bf16 is cast via float32)."""
    target = WIRE_NUMPY_DTYPES[wire_dtype]
    arrays = {}
    for name, tensor in state.items():
        if isinstance(tensor, torch.Tensor):
            tensor = tensor.detach().to("cpu", torch.float32).numpy()
        if wire_dtype == "int8":
            codes, absmax = blockwise_int8.quantise(tensor)
            arrays[name], arrays[name + ABSMAX_SUFFIX] = Array(codes), Array(absmax)
        else:
            arrays[name] = Array(np.ascontiguousarray(tensor, dtype=target))
    return ArrayRecord(arrays)


def as_received(state: Mapping[str, np.ndarray], wire_dtype: str) -> dict[str, np.ndarray]:
    """What the receiver will decode from ``state`` sent in ``wire_dtype`` (float32 arrays)."""
    schema = AdapterSchema.from_state(state, wire_dtype)
    return decode_adapter(encode_adapter(state, wire_dtype), schema)


def decode_adapter(record: object, schema: AdapterSchema) -> dict[str, np.ndarray]:
    """Validate a received ``ArrayRecord`` against ``schema``; return float32 arrays."""
    if not isinstance(record, ArrayRecord):
        raise AdapterValidationError(f"expected an ArrayRecord of adapter tensors, got {type(record).__name__}")
    expected_keys = schema.wire_keys()
    missing = sorted(expected_keys - set(record))
    unexpected = sorted(set(record) - expected_keys)
    if missing or unexpected:
        raise AdapterValidationError(
            f"adapter key set differs: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]})"
        )
    wire = WIRE_NUMPY_DTYPES[schema.wire_dtype]
    decoded = {}
    for name, expected_shape in schema.shapes.items():
        value = _checked_array(record, name, wire, expected_shape)
        if schema.wire_dtype == "int8":
            blocks = (blockwise_int8.num_blocks(int(np.prod(expected_shape))),)
            absmax = _checked_array(record, name + ABSMAX_SUFFIX, np.dtype(np.float32), blocks)
            value = blockwise_int8.dequantise(value, absmax)
        decoded[name] = value.astype(np.float32)
    return decoded


def _checked_array(record: ArrayRecord, name: str, dtype: np.dtype, expected_shape: tuple[int, ...]) -> np.ndarray:
    """One array of ``record``, checked for declared and actual dtype and shape, and finiteness."""
    array = record[name]
    if array.dtype != str(dtype):
        raise AdapterValidationError(f"tensor {name} has dtype {array.dtype}, expected {dtype}")
    if tuple(array.shape) != expected_shape:
        raise AdapterValidationError(f"tensor {name} has shape {tuple(array.shape)}, expected {expected_shape}")
    try:
        value = array.numpy()
    except Exception as error:  # np.load raises several types on a corrupt payload
        raise AdapterValidationError(f"tensor {name} is not a readable array payload ({error})") from error
    if value.dtype != dtype or value.shape != expected_shape:
        raise AdapterValidationError(
            f"tensor {name} payload is {value.dtype}{value.shape}, declared {array.dtype}{tuple(array.shape)}"
        )
    if value.dtype.kind == "f":
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        if bad:
            raise AdapterValidationError(f"tensor {name} has {bad} NaN/Inf values")
    return value
