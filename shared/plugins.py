"""Named plug-ins chosen by a config key (aggregation rules, attacks), PEFT-style.

A plug-in class declares its options with defaults; a registry maps names to
classes, so adding one is one module and one decorator line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Generic, TypeVar


class Plugin:
    """A class chosen by name, built with keyword options checked against its defaults."""

    name: ClassVar[str]
    kind: ClassVar[str] = "plug-in"

    def __init__(self, **options: Any) -> None:
        unknown = set(options) - set(self.option_defaults())
        if unknown:
            raise ValueError(
                f"{self.kind} '{self.name}' has no option(s) {sorted(unknown)}; it takes {self.option_defaults()}"
            )
        self.options = {**self.option_defaults(), **options}

    @classmethod
    def option_defaults(cls) -> dict[str, Any]:
        return {}


P = TypeVar("P", bound=Plugin)


class Registry(Generic[P]):
    """Name -> class for one kind of plug-in."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.classes: dict[str, type[P]] = {}

    def register(self, name: str) -> Callable[[type[P]], type[P]]:
        def add(cls: type[P]) -> type[P]:
            if name in self.classes:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            cls.name = name
            self.classes[name] = cls
            return cls

        return add

    def make(self, name: str, **options: Any) -> P:
        if name not in self.classes:
            raise ValueError(f"unknown {self.kind} '{name}'; known: {sorted(self.classes)}")
        return self.classes[name](**options)
