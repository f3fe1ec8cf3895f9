"""Name -> rule class, PEFT-style: one decorator line per rule."""

from __future__ import annotations

from stamen.shared.plugins import Registry

from .base import AggregationRule

_RULES: Registry[AggregationRule] = Registry("aggregation rule")
RULES = _RULES.classes
register = _RULES.register
make_rule = _RULES.make
