"""What a PEFT method is to Stamen: how an :class:`~stamen.shared.config.AdapterSpec` becomes its PEFT config."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from stamen.shared.plugins import Plugin

if TYPE_CHECKING:
    from stamen.shared.config import AdapterSpec


class PeftMethod(Plugin):
    kind = "adapter method"

    @classmethod
    def peft_config(cls, spec: AdapterSpec) -> Any:
        """The ``peft`` config that wraps a causal LM's ``spec.targets`` with this method."""
        raise NotImplementedError
