"""ε of a sequence of Gaussian releases, by an Opacus accountant chosen by name (``rdp``, ``prv``, ``gdp``).

The server's privacy engine accounts the rounds it releases; a device accounts its own releases with
the same class (:mod:`stamen.client.device.release_ledger`), so it need not take the server's word for its ε.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from opacus.accountants import create_accountant

from .config import ConfigError

_HISTORY = "privacy/history"


class PrivacyAccountant:
    """ε at the configured δ after each round, by an Opacus accountant of the subsampled Gaussian."""

    def __init__(self, delta: float, mechanism: str = "rdp") -> None:
        self.delta = delta
        try:
            self._accountant = create_accountant(mechanism)
        except ValueError:
            raise ConfigError(f"configuration key 'dp-accountant' = {mechanism!r} is not an Opacus accountant "
                              f"(rdp, prv or gdp)") from None

    def record_round(self, noise_multiplier: float, sample_rate: float) -> float:
        """Account one release; return ε so far."""
        self._accountant.step(noise_multiplier=noise_multiplier, sample_rate=min(1.0, sample_rate))
        return self.epsilon()

    def epsilon(self) -> float:
        return float(self._accountant.get_epsilon(self.delta)) if self._accountant.history else 0.0

    def state_dict(self) -> dict[str, np.ndarray]:
        return {_HISTORY: np.array(self._accountant.history, dtype=np.float64).reshape(-1, 3)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        rows = state.get(_HISTORY, np.zeros((0, 3)))
        self._accountant.history = [(float(z), float(q), int(steps)) for z, q, steps in rows]
