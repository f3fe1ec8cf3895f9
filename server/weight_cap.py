"""Bounded influence: how much one client's reported example count may weigh in a round.

A client chooses the example count it reports. Uncapped, a claim of 1e12 examples makes
the mean that client's delta; under secure aggregation a crafted weight coordinate can
shrink the total weight the sum is divided by. Plain rounds cap each weight at a multiple of
the round's lower median (and at ``max-client-weight`` when that is set lower), which bounds any
one client's share of the round's weight for every number of clients (:func:`max_weight_share`);
secure rounds check the decoded total weight against what ``count`` honest clients can sum to,
and refuse a sum outside it.
"""

from __future__ import annotations

import math

from stamen.shared.config import PrivacySpec
from stamen.shared.secagg_protocol import weight_bounds

MEDIAN_MULTIPLE = 4.0  # a client may weigh at most this many times the round's lower median


def round_weight_cap(weights: list[float], max_client_weight: float) -> float:
    """The largest weight one client may have this round: ``MEDIAN_MULTIPLE`` times the lower median (the
    middle weight; of two middle ones, the lower, so that with two clients one cannot set the cap by its own
    claim), or ``max-client-weight`` where that is set and lower."""
    if not weights:
        return float("inf")
    cap = MEDIAN_MULTIPLE * sorted(weights)[(len(weights) - 1) // 2]
    return min(cap, max_client_weight) if max_client_weight > 0 else cap


def max_weight_share(num_clients: int) -> float:
    """The most of a plain round's weight one client can have under :func:`round_weight_cap`, whatever every
    client reports: at least ``ceil((n-1)/2)`` others weigh at least the lower median ``m`` after capping, and
    this one at most ``M m``, so its share is at most ``M / (M + ceil((n-1)/2))`` (80% for 2 or 3 clients,
    44% for 10, 7.4% for 100)."""
    return MEDIAN_MULTIPLE / (MEDIAN_MULTIPLE + math.ceil((num_clients - 1) / 2))


class SecureSumOutOfBounds(ValueError):
    """A decoded secure sum whose total weight no ``count`` honest clients could have sent."""


def check_secure_total(total_weight: float, count: int, privacy: PrivacySpec, tolerance: float) -> None:
    """Refuse a secure sum whose total weight lies outside ``count`` times the per-client weight bounds."""
    low, high = weight_bounds(privacy)
    if not count * low - tolerance <= total_weight <= count * high + tolerance:
        raise SecureSumOutOfBounds(
            f"the secure sum's total weight {total_weight:.6g} is outside [{count * low:.6g}, {count * high:.6g}] "
            f"that {count} clients can send; a client crafted its weight coordinate, so the sum is refused")
