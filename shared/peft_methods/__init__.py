"""PEFT methods, registered by name and chosen by the ``adapter`` config key.

Adding a method: one module with one subclass of :class:`PeftMethod` decorated with
``@register("name")``, and one import line below; any other PEFT type is built from the
options its config accepts (``registry.AnyPeftType``).
"""

from __future__ import annotations

from . import adalora, ia3, lora  # noqa: F401  (registration)
from .base import PeftMethod
from .registry import PEFT_METHODS, peft_method, register

__all__ = ["PEFT_METHODS", "PeftMethod", "peft_method", "register"]
