"""IA3 (Liu et al. 2022): learnt scales on the targets' activations; feed-forward targets scale their input."""

from __future__ import annotations

from typing import Any

from .base import PeftMethod
from .registry import register

FEEDFORWARD_MODULES = {"down_proj", "up_proj", "gate_proj", "fc1", "fc2", "c_fc", "mlp"}


@register("ia3")
class Ia3(PeftMethod):
    @classmethod
    def peft_config(cls, spec) -> Any:
        from peft import IA3Config, TaskType

        targets = list(spec.targets)
        feedforward = [t for t in targets if t in FEEDFORWARD_MODULES]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=TaskType.CAUSAL_LM)
