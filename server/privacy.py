"""Differential privacy on the server: one engine for central clipping and noise and the accountant.

Both DP modes release the sum of clipped updates plus Gaussian noise of standard
deviation ``z * C`` (``z`` the noise multiplier, ``C`` the clipping bound), with
every client weighted equally so one client moves the sum by at most ``C``. In
``central`` mode the server clips and adds the noise; in ``distributed`` mode each
client clips and adds its share under secure aggregation, and clients that drop
take their share with them, which the accountant records as a smaller ``z``. The
accountant is Opacus' by name (``dp-accountant``: ``rdp``, ``prv``, ``gdp``).

Amplification by sampling holds only when who takes part is secret from the adversary. In
``central`` mode with ``fraction-train`` q < 1 the engine picks each node independently with
probability q from the operating system's CSPRNG (Poisson sampling, nothing derived from the
public run seed) and accounts at rate q; in ``distributed`` mode the adversary is the server,
which sees whom it asked, so every round is accounted without amplification (q = 1).
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Mapping

import numpy as np
from flwr.app import Message

from stamen.shared.clipping import clip_l2
from stamen.shared.config import PrivacySpec
from stamen.shared.dp_accountant import PrivacyAccountant

from .extensions import RoundOutcome, ServerExtension
from .rules import AggregationRule, ClientUpdate


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


class PoissonSampling:
    """Each node takes part in a round independently with probability ``rate``, drawn from a CSPRNG."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self._rng = random.SystemRandom()

    def sample(self, messages: list[Message]) -> list[Message]:
        return [message for message in messages if self._rng.random() < self.rate]


class PrivacyEngine(ServerExtension):
    """The run's differential privacy, the one object the round holds for it: central clipping
    and noise (``dp = central``), secret Poisson sampling of the round's nodes where it amplifies
    privacy, and the accountant's ε after every release (both modes)."""

    def __init__(self, privacy: PrivacySpec, shapes: Mapping[str, tuple[int, ...]], fraction_train: float = 1.0
                 ) -> None:
        """``fraction_train`` < 1 in central mode: the strategy hands every node's message to
        :meth:`configure`, which keeps each with that probability."""
        self.privacy, self.shapes = privacy, shapes
        self.central = CentralPrivacy(privacy) if privacy.dp == "central" else None
        self.poisson = PoissonSampling(fraction_train) if self.central and fraction_train < 1 else None
        self.sample_rate = self.poisson.rate if self.poisson else 1.0
        self.sampling = ("poisson (CSPRNG, secret from the seed)" if self.poisson else
                         "none (every client)" if privacy.dp == "central" else
                         "none (the server sees whom it asks)")
        self.accountant = PrivacyAccountant(privacy.dp_delta, privacy.dp_accountant)

    def configure(self, messages: list[Message], phase: str) -> list[Message]:
        return self.poisson.sample(messages) if self.poisson and phase == "train" else messages

    def add(self, update: ClientUpdate) -> ClientUpdate:
        return self.central.clip_update(update) if self.central else update

    def finish_round(self, outcome: RoundOutcome) -> None:
        if self.central:
            self.central.add_noise(outcome.rule, self.shapes)

    def round_metrics(self, outcome: RoundOutcome) -> dict[str, float | str]:
        """ε after this round. A round that folded nothing in released nothing, except under Poisson sampling,
        where an empty sample is one of the outcomes the accountant's rate already covers."""
        if not outcome.rule.count and not self.poisson:
            return {}
        multiplier = self.privacy.dp_noise_multiplier * outcome.noise_share
        epsilon = self.accountant.record_round(multiplier, self.sample_rate)
        return {"dp_epsilon": epsilon, "dp_delta": self.privacy.dp_delta, "dp_noise_multiplier": multiplier,
                "dp_sample_rate": self.sample_rate, "dp_sampling": self.sampling}

    def state_dict(self) -> dict[str, np.ndarray]:
        return self.accountant.state_dict()

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.accountant.load_state_dict(state)
