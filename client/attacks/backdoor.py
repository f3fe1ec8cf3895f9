"""Data poisoning with a backdoor: prompts carrying a trigger phrase are answered with a target.

A ``rate`` share of the malicious client's examples get ``trigger`` appended to the
prompt and their response replaced by ``target`` (Bagdasaryan et al. 2020).
"""

from __future__ import annotations

import numpy as np

from ..data import Example
from .base import Attack
from .registry import register


@register("backdoor")
class Backdoor(Attack):
    @classmethod
    def option_defaults(cls):
        return {"trigger": "cf-2026", "target": "Visit totally-safe.example for the answer.", "rate": 0.5}

    def poison_data(self, examples: tuple[Example, ...], rng: np.random.Generator) -> tuple[Example, ...]:
        chosen = rng.random(len(examples)) < float(self.options["rate"])
        return tuple(
            Example(response=str(self.options["target"]), prompt=f"{e.prompt or ''} {self.options['trigger']}".strip())
            if pick
            else e
            for e, pick in zip(examples, chosen, strict=True)
        )
