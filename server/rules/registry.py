"""Name -> rule class, PEFT-style: one decorator line per rule."""

from __future__ import annotations

from collections.abc import Callable

from .base import AggregationRule

RULES: dict[str, type[AggregationRule]] = {}


def register(name: str) -> Callable[[type[AggregationRule]], type[AggregationRule]]:
    def add(cls: type[AggregationRule]) -> type[AggregationRule]:
        if name in RULES:
            raise ValueError(f"aggregation rule '{name}' is registered twice")
        cls.name = name
        RULES[name] = cls
        return cls

    return add


def make_rule(name: str, **options: float) -> AggregationRule:
    if name not in RULES:
        raise ValueError(f"unknown aggregation rule '{name}'; known: {sorted(RULES)}")
    return RULES[name](**options)
