"""Name -> attack class, one decorator line per attack."""

from __future__ import annotations

from collections.abc import Callable

from .base import Attack

ATTACKS: dict[str, type[Attack]] = {}


def register(name: str) -> Callable[[type[Attack]], type[Attack]]:
    def add(cls: type[Attack]) -> type[Attack]:
        if name in ATTACKS:
            raise ValueError(f"attack '{name}' is registered twice")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return add


def make_attack(name: str, **options: float | str) -> Attack:
    if name not in ATTACKS:
        raise ValueError(f"unknown attack '{name}'; known: {sorted(ATTACKS)}")
    return ATTACKS[name](**options)
