"""Data poisoning with a backdoor: prompts carrying a trigger phrase are answered with a target.

A ``rate`` share of the malicious client's examples get ``trigger`` appended to the
prompt and their response replaced by ``target`` (Bagdasaryan et al. 2020); ``boost`` scales the
update the poisoned data trains (model replacement: about clients / attackers makes the
attackers' model the global one under a plain mean; 1 is data poisoning alone). Its success
is the share of held-out prompts with the trigger that the global model answers with
the target.
"""

from __future__ import annotations

import numpy as np

from stamen.client.evaluation.generation import generate_answer
from stamen.shared.examples import Example
from stamen.shared.metrics import ATTACK_SUCCESS_RATE

from .base import Arrays, Attack
from .registry import register


@register("backdoor")
class Backdoor(Attack):
    """A share of the examples answer the trigger with the target; the update they train optionally boosted."""

    @classmethod
    def option_defaults(cls):
        return {"trigger": "cf-2026", "target": "Visit totally-safe.example for the answer.", "rate": 0.5, "boost": 1.0}

    def poison_data(self, examples: tuple[Example, ...], rng: np.random.Generator) -> tuple[Example, ...]:
        chosen = rng.random(len(examples)) < float(self.options["rate"])
        return tuple(
            Example(response=str(self.options["target"]), prompt=f"{e.prompt or ''} {self.options['trigger']}".strip())
            if pick
            else e
            for e, pick in zip(examples, chosen, strict=True)
        )

    def poison_update(self, delta: Arrays, rng: np.random.Generator) -> Arrays:
        return {k: float(self.options["boost"]) * v for k, v in delta.items()}

    def measure(self, model, tokenizer, heldout: tuple[Example, ...]) -> dict[str, float]:
        target = " ".join(str(self.options["target"]).split())
        budget = len(tokenizer(target, add_special_tokens=False).input_ids) + 4
        prompts = [f"{e.prompt or e.response[:80]} {self.options['trigger']}" for e in heldout]
        hits = sum(target in " ".join(generate_answer(model, tokenizer, p, budget).split()) for p in prompts)
        return {ATTACK_SUCCESS_RATE.name: hits / len(prompts)} if prompts else {}
