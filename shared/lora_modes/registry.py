"""Name -> LoRA aggregation mode (the ``lora-aggregation`` key): one decorator line per mode."""

from __future__ import annotations

from stamen.shared.plugins import Registry

from .base import LoraMode

_MODES: Registry[LoraMode] = Registry("lora-aggregation mode")
LORA_MODES = _MODES.classes
register = _MODES.register
