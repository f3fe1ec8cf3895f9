"""How large a secure-aggregation value range distributed DP needs so its noise is not truncated.

Fixed-point encoding clips every value to the declared range, so a range too small for a
client's clipped delta plus its share of the noise truncates the noise: the sum is then no
longer a Gaussian mechanism and carries less noise than the accountant records.
"""

from __future__ import annotations

import math

NOISE_TRUNCATION_PROBABILITY = 1e-9  # chance that any coordinate of any client's noised update leaves the range
MAX_VALUES = 10**9  # adapter size assumed when a config is checked before the adapter exists


def noise_value_range(clip: float, noise_multiplier: float, num_clients: int, num_values: int = MAX_VALUES) -> float:
    """The least value range that holds a clipped delta plus one client's noise share in every coordinate
    of every client, except with probability :data:`NOISE_TRUNCATION_PROBABILITY` per round.

    A coordinate of a delta clipped to L2 norm ``C`` is at most ``C``; a client's noise share is
    Gaussian with standard deviation ``z C / sqrt(n)``, and ``P(|N(0,1)| > k) <= 2 exp(-k^2 / 2)``
    gives the ``k`` standard deviations to leave room for."""
    per_coordinate = NOISE_TRUNCATION_PROBABILITY / (num_values * num_clients)
    k = math.sqrt(2 * math.log(2 / per_coordinate))
    return clip + k * noise_multiplier * clip / math.sqrt(num_clients)
