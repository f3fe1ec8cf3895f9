"""What a PEFT method is to Stamen: how an :class:`~stamen.shared.config.AdapterSpec` becomes its PEFT config."""

from __future__ import annotations

from collections.abc import Callable
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

    @classmethod
    def step_hook(cls, model: Any, local_steps: int) -> Callable[[int], None] | None:
        """What a method that reshapes itself while it trains does after each optimiser step of a round of
        ``local_steps`` (called with the step's index, gradients still in place); None for most methods."""
        return None
