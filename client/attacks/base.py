"""What an attack is: a malicious client's change to its data, its update, or both.

Attacks exist to test defences in simulation; a run picks one by name (``attack``)
for a seeded fraction of its clients (``attack-fraction``).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from ..data import Example

Arrays = dict[str, np.ndarray]


class Attack:
    """Honest by default; subclasses override what they poison."""

    name: ClassVar[str]

    def __init__(self, **options: float | str) -> None:
        unknown = set(options) - set(self.option_defaults())
        if unknown:
            raise ValueError(f"attack '{self.name}' has no option(s) {sorted(unknown)}; it takes {self.option_defaults()}")
        self.options = {**self.option_defaults(), **options}

    @classmethod
    def option_defaults(cls) -> dict[str, float | str]:
        return {}

    def poison_data(self, examples: tuple[Example, ...], rng: np.random.Generator) -> tuple[Example, ...]:
        return examples

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return delta
