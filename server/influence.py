"""Bounded influence: how much one client's reported example count may weigh in a round.

A client chooses the example count it reports. Uncapped, a claim of 1e12 examples makes
the mean that client's delta; under secure aggregation a crafted weight coordinate can
shrink the total weight the sum is divided by. Plain rounds cap each weight at
``max-client-weight`` (default: a multiple of the round's median, which honest clients
set while they are the majority); secure rounds check the decoded total weight against
what ``count`` honest clients can sum to, and refuse a sum outside it.
"""

from __future__ import annotations

import statistics

from stamen.shared.config import PrivacySpec
from stamen.shared.secagg_protocol import weight_bounds

MEDIAN_MULTIPLE = 4.0  # the default cap: a client may weigh at most this many times the round's median


def round_weight_cap(weights: list[float], max_client_weight: float) -> float:
    """The largest weight one client may have this round: the configured cap, or a multiple of the median."""
    if max_client_weight > 0:
        return max_client_weight
    return MEDIAN_MULTIPLE * statistics.median(weights) if weights else float("inf")


class SecureSumOutOfBounds(ValueError):
    """A decoded secure sum whose total weight no ``count`` honest clients could have sent."""


def check_secure_total(total_weight: float, count: int, privacy: PrivacySpec, tolerance: float) -> None:
    """Refuse a secure sum whose total weight lies outside ``count`` times the per-client weight bounds."""
    low, high = weight_bounds(privacy)
    if not count * low - tolerance <= total_weight <= count * high + tolerance:
        raise SecureSumOutOfBounds(
            f"the secure sum's total weight {total_weight:.6g} is outside [{count * low:.6g}, {count * high:.6g}] "
            f"that {count} clients can send; a client crafted its weight coordinate, so the sum is refused")
