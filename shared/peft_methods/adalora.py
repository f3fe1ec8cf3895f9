"""AdaLoRA (Zhang et al. 2023): LoRA in SVD form (P diag(E) Q) whose rank budget is reallocated while it trains.

Each client reallocates on its own: over a round's local steps its budget falls from ``lora-rank`` triplets per
layer to half of them, by the importance (|w x grad|, smoothed) it measures on its own data, and the singular
values (E) of the triplets it prunes are set to 0 in the update it sends. The server averages P, E and Q like any
other tensor: a triplet pruned by some clients and kept by others comes back with its E shrunk by the share that
pruned it, and every client starts the next round from the full rank again. The exported adapter keeps the full
rank, the averaged E in place."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import PeftMethod
from .registry import register


@register("adalora")
class AdaLora(PeftMethod):
    @classmethod
    def peft_config(cls, spec) -> Any:
        from peft import AdaLoraConfig, TaskType

        # total_step is set per round by step_hook; PEFT needs a positive one at construction
        return AdaLoraConfig(init_r=spec.rank, target_r=max(1, spec.rank // 2), lora_alpha=spec.alpha,
                             lora_dropout=spec.dropout, target_modules=list(spec.targets), total_step=1,
                             task_type=TaskType.CAUSAL_LM)

    @classmethod
    def step_hook(cls, model: Any, local_steps: int) -> Callable[[int], None]:
        tuner = model.base_model
        tuner.peft_config[tuner.trainable_adapter_name].total_step = local_steps  # the budget schedule: one round
        return tuner.update_and_allocate
