"""Fixed-point encoding of float vectors into Z_(2^bits), so masked sums wrap exactly.

A value in [-clip, clip] maps to ``round(value * scale)`` with ``scale`` just under
``2^(bits-1) / (clip * n)`` (a margin absorbs rounding): the sum of ``n`` such values
stays inside the signed range, so decoding the modular sum of all clients is exact
up to each client's rounding error of at most ``0.5 / scale``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MODULUS_DTYPES = {32: np.uint32, 64: np.uint64}
_SIGNED = {32: np.int32, 64: np.int64}


@dataclass(frozen=True)
class FixedPoint:
    """The codec every client of one secure round agrees on."""

    clip: float  # declared range of each value: [-clip, clip]
    num_summands: int  # how many vectors the sum may hold
    bits: int = 32  # modulus 2^bits

    def __post_init__(self) -> None:
        if self.bits not in MODULUS_DTYPES:
            raise ValueError(f"modulus bits must be one of {sorted(MODULUS_DTYPES)}, got {self.bits}")
        if not (self.clip > 0 and self.num_summands >= 1):
            raise ValueError(f"need clip > 0 and at least one summand, got {self.clip}, {self.num_summands}")

    @property
    def dtype(self) -> type[np.unsignedinteger]:
        return MODULUS_DTYPES[self.bits]

    @property
    def scale(self) -> float:
        headroom = 2.0 ** (self.bits - 1) * (1 - 2.0**-20) - self.num_summands
        return headroom / (self.clip * self.num_summands)

    @property
    def sum_error_bound(self) -> float:
        """Largest absolute error of one decoded coordinate of a sum of ``num_summands`` vectors."""
        return 0.5 * self.num_summands / self.scale

    def encode(self, values: np.ndarray) -> np.ndarray:
        """Clip to the declared range and map into Z_(2^bits) (two's complement)."""
        values = np.asarray(values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise ValueError("cannot encode NaN or Inf for secure aggregation")
        scaled = np.rint(np.clip(values, -self.clip, self.clip) * self.scale)
        return scaled.astype(_SIGNED[self.bits]).view(self.dtype)

    def decode_sum(self, total: np.ndarray) -> np.ndarray:
        """Floats from a modular sum of encoded vectors."""
        return total.astype(self.dtype).view(_SIGNED[self.bits]).astype(np.float64) / self.scale
