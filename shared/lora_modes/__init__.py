"""LoRA aggregation modes, registered by name and chosen by the ``lora-aggregation`` config key.

Adding a mode: one module with one subclass of :class:`LoraMode` decorated with
``@register("name")`` declaring what it supports, and one import line below.
"""

from __future__ import annotations

from . import exact, fedsa, ffa, naive  # noqa: F401  (registration)
from .base import LoraMode
from .registry import LORA_MODES, register

__all__ = ["LORA_MODES", "LoraMode", "register"]
