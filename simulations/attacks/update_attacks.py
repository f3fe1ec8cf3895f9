"""Attacks on the update itself (Fang et al. 2020; Lin et al. 2019 for free riders)."""

from __future__ import annotations

import numpy as np

from .base import Arrays, Attack
from .registry import register


@register("sign-flip")
class SignFlip(Attack):
    """Send the delta pointing the other way, ``scale`` times as long."""

    @classmethod
    def option_defaults(cls):
        return {"scale": 1.0}

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return {k: -float(self.options["scale"]) * v for k, v in delta.items()}


@register("scaled")
class Scaled(Attack):
    """Boost the delta by ``factor`` (model replacement)."""

    @classmethod
    def option_defaults(cls):
        return {"factor": 10.0}

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return {k: float(self.options["factor"]) * v for k, v in delta.items()}


@register("gaussian")
class GaussianNoise(Attack):
    """Replace the delta by Gaussian noise of standard deviation ``sigma``."""

    @classmethod
    def option_defaults(cls):
        return {"sigma": 0.01}

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        sigma = float(self.options["sigma"])
        return {k: rng.normal(0.0, sigma, size=v.shape).astype(v.dtype) for k, v in delta.items()}


@register("same-value")
class SameValue(Attack):
    """Colluders all send the same constant delta ``value`` in every coordinate."""

    @classmethod
    def option_defaults(cls):
        return {"value": 0.01}

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return {k: np.full_like(v, float(self.options["value"])) for k, v in delta.items()}


@register("free-rider")
class FreeRider(Attack):
    """Claim the examples but return the global adapter unchanged (a zero delta)."""

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return {k: np.zeros_like(v) for k, v in delta.items()}


@register("nan")
class NotANumber(Attack):
    """Send NaN and Inf values: validation must reject the update before any rule sees it."""

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        poisoned = {k: v.copy() for k, v in delta.items()}
        first = sorted(poisoned)[0]
        poisoned[first].flat[0] = np.nan
        poisoned[first].flat[-1] = np.inf
        return poisoned


@register("wrong-shape")
class WrongShape(Attack):
    """Send a tensor with a row missing: validation must reject the update."""

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        poisoned = dict(delta)
        first = sorted(poisoned)[0]
        poisoned[first] = poisoned[first][:-1]
        return poisoned
