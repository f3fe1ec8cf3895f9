"""Aggregation rules, registered by name and chosen by the ``aggregation`` config key.

Adding a rule: one module with one subclass of :class:`AggregationRule` decorated with
``@register("name")``, and one import line below (see docs/aggregation-rules.md).
"""

from __future__ import annotations

from . import (  # noqa: F401  (registration)
    bulyan,
    fedadagrad,
    fedadam,
    fedavg,
    fedavgm,
    fedprox,
    fedyogi,
    fltrust,
    krum,
    median,
    multikrum,
    norm_bounding,
    scaffold,
    trimmed_mean,
)
from .base import AggregationRule, ClientUpdate
from .registry import RULES, make_rule, register

__all__ = ["RULES", "AggregationRule", "ClientUpdate", "make_rule", "register"]
