"""Name -> PEFT method (the ``adapter`` key); a PEFT type Stamen has no module for is built generically."""

from __future__ import annotations

import inspect
from typing import Any

from stamen.shared.plugins import Registry

from .base import PeftMethod

_METHODS: Registry[PeftMethod] = Registry("adapter method")
PEFT_METHODS = _METHODS.classes
register = _METHODS.register


class AnyPeftType(PeftMethod):
    """Any other PEFT type, given the options it accepts: those that adapt target modules (LoHa, LoKr, VeRA, ...)
    get ``lora-targets`` and the rank; the prompt-learning ones (prompt_tuning, prefix_tuning, p_tuning)
    ``virtual-tokens``."""

    @classmethod
    def peft_config(cls, spec) -> Any:
        from peft import TaskType
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(spec.method.upper().replace("-", "_"))
        if config_class is None:
            types = ", ".join(sorted(t.lower() for t in PEFT_TYPE_TO_CONFIG_MAPPING))
            raise ValueError(f"unknown adapter method '{spec.method}'; use {', '.join(sorted(PEFT_METHODS))} "
                             f"or a PEFT type name ({types})")
        accepted = inspect.signature(config_class).parameters
        offered = {"r": spec.rank, "alpha": spec.alpha, "lora_alpha": spec.alpha, "target_modules": list(spec.targets),
                   "num_virtual_tokens": spec.virtual_tokens}
        return config_class(task_type=TaskType.CAUSAL_LM, **{k: v for k, v in offered.items() if k in accepted})


def peft_method(name: str) -> type[PeftMethod]:
    return PEFT_METHODS.get(name, AnyPeftType)
