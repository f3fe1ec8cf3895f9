"""L2 clipping of a whole adapter update: norm bounding and differential privacy both need it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def l2_norm(arrays: Mapping[str, np.ndarray]) -> float:
    return float(np.sqrt(sum(float(np.sum(np.square(v, dtype=np.float64))) for v in arrays.values())))


def clip_l2(arrays: Mapping[str, np.ndarray], bound: float) -> dict[str, np.ndarray]:
    """``arrays`` scaled down (never up) so their joint L2 norm is at most ``bound``."""
    norm = l2_norm(arrays)
    factor = min(1.0, bound / norm) if norm > 0 else 1.0
    return {k: v * factor for k, v in arrays.items()}
