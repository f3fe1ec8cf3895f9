"""What a replay source is: examples to mix into the round's batches and/or gradient corrections.

Sources are registered by name, one class each beside the concept it uses (the reservoir in
:mod:`.buffer`, the anchor set in :mod:`.anchor`, the base's own answers in
:mod:`.self_replay`, EWC in :mod:`.ewc`); the names are the ``replay`` key's vocabulary that
:data:`stamen.shared.config.REPLAY_SOURCES` declares to both sides.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from flwr.app import ConfigRecord

from stamen.shared.config import RunConfig
from stamen.shared.examples import Example
from stamen.shared.plugins import Plugin, Registry
from stamen.shared.training import GradientCorrection

from ..state_store import ClientStateStore


@dataclass
class ReplayInputs:
    """What a source may read when a round starts (``model`` holds the received adapter)."""

    config: RunConfig
    store: ClientStateStore
    server_round: int
    client_name: str
    model: Any
    tokenizer: Any
    anchor: ConfigRecord | None  # the anchor set, if this round's instruction carried it
    buffer: Any = None  # the device's reservoir of earlier examples, for sources that use it
    base_identity: str = ""  # the base's fingerprint and quantisation: what a source may cache its work under
    costs: dict[str, float] = field(default_factory=dict)  # one-time costs a source paid this round, reported


class ReplaySource(Plugin):
    kind = "replay source"
    uses_buffer: ClassVar[bool] = False  # the round loads the device's reservoir (and adds to it after training)

    @classmethod
    def replay(cls, inputs: ReplayInputs) -> tuple[list[Example], tuple[GradientCorrection, ...]]:
        """This round's examples to mix in and gradient corrections to apply."""
        raise NotImplementedError


_SOURCES: Registry[ReplaySource] = Registry("replay source")
REPLAY_SOURCE_CLASSES = _SOURCES.classes
register = _SOURCES.register
