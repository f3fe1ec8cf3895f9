"""Differential privacy on the server: central clipping and noise, and the privacy accountant.

Both DP modes release the sum of clipped updates plus Gaussian noise of standard
deviation ``z * C`` (``z`` the noise multiplier, ``C`` the clipping bound), with
every client weighted equally so one client moves the sum by at most ``C``. In
``central`` mode the server clips and adds the noise; in ``distributed`` mode each
client clips and adds its share under secure aggregation, and clients that drop
take their share with them, which the accountant records as a smaller ``z``.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping

import numpy as np
from opacus.accountants import RDPAccountant

from stamen.shared.clipping import clip_l2
from stamen.shared.config import ConfigError, PrivacySpec

from .rules import AggregationRule, ClientUpdate

_HISTORY = "privacy/history"


def check_privacy(rule: AggregationRule, privacy: PrivacySpec) -> None:
    """Refuse rules that cannot run under the configured secure aggregation or DP, saying why."""
    if (privacy.secure_aggregation or privacy.dp != "none") and rule.needs_individual_updates:
        what = "secure aggregation yields only the sum of updates" if privacy.secure_aggregation else \
            "differential privacy bounds each client's effect on a mean, which this rule does not compute"
        raise ConfigError(f"aggregation '{rule.name}' needs each client's update, but {what}; "
                          f"use a mean-based rule (fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad)")
    if privacy.dp != "none" and rule.extra_uploads:
        raise ConfigError(f"aggregation '{rule.name}' uploads {list(rule.extra_uploads)} besides the delta, "
                          f"which differential privacy would leave unprotected")


class CentralPrivacy:
    """``dp = central``: the server clips every accepted update and noises their sum."""

    def __init__(self, privacy: PrivacySpec) -> None:
        self.clip, self.multiplier = privacy.dp_clip, privacy.dp_noise_multiplier
        self._rng = np.random.default_rng(secrets.randbits(128))  # DP noise must not be predictable

    def clip_update(self, update: ClientUpdate) -> ClientUpdate:
        return ClientUpdate(update.client, clip_l2(update.delta, self.clip), 1.0, update.extras)

    def add_noise(self, rule: AggregationRule, shapes: Mapping[str, tuple[int, ...]]) -> None:
        std = self.multiplier * self.clip
        rule.add_sum({k: self._rng.normal(0.0, std, shape) for k, shape in shapes.items()}, 0.0, 0)


class PrivacyAccountant:
    """ε at the configured δ after each round, by Rényi DP of the subsampled Gaussian (Opacus)."""

    def __init__(self, delta: float) -> None:
        self.delta = delta
        self._rdp = RDPAccountant()

    def record_round(self, noise_multiplier: float, sample_rate: float) -> float:
        """Account one release; return ε so far."""
        self._rdp.step(noise_multiplier=noise_multiplier, sample_rate=min(1.0, sample_rate))
        return self.epsilon()

    def epsilon(self) -> float:
        return float(self._rdp.get_epsilon(self.delta)) if self._rdp.history else 0.0

    def state_dict(self) -> dict[str, np.ndarray]:
        return {_HISTORY: np.array(self._rdp.history, dtype=np.float64).reshape(-1, 3)}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        rows = state.get(_HISTORY, np.zeros((0, 3)))
        self._rdp.history = [(float(z), float(q), int(steps)) for z, q, steps in rows]
