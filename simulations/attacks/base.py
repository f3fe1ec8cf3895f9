"""What an attack is: a malicious client's change to its data, its update, or both.

Attacks exist to test defences in simulation; a run picks one by name (``attack``)
for a seeded fraction of its clients (``attack-fraction``).
"""

from __future__ import annotations

import numpy as np

from stamen.shared.examples import Example
from stamen.shared.plugins import Plugin

Arrays = dict[str, np.ndarray]


class Attack(Plugin):
    """Honest by default; subclasses override what they poison."""

    kind = "attack"

    def poison_data(self, examples: tuple[Example, ...], rng: np.random.Generator) -> tuple[Example, ...]:
        return examples

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return delta

    def measure(self, model, tokenizer, heldout: tuple[Example, ...]) -> dict[str, float]:
        """Metrics of this attack's success on the global model, measured by every client (honest ones too)."""
        return {}
