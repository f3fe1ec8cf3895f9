"""LoRA (Hu et al. 2021) and DoRA (Liu et al. 2024, LoRA with a learnt magnitude): PEFT's ``LoraConfig``."""

from __future__ import annotations

from typing import Any

from .base import PeftMethod
from .registry import register


@register("lora")
class Lora(PeftMethod):
    @classmethod
    def peft_config(cls, spec) -> Any:
        from peft import LoraConfig, TaskType

        return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                          target_modules=list(spec.targets), use_dora=cls.name == "dora", task_type=TaskType.CAUSAL_LM)


@register("dora")
class Dora(Lora):
    pass
