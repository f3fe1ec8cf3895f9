"""Limits a device sets on the work it accepts, checked before a round starts.

A device that cannot meet a round's budget declines it with a reason (Flower turns
the exception into an error reply the server logs) rather than being killed by
the operating system half-way through.
"""

from __future__ import annotations

import json
import resource
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from stamen.shared.atomic import atomic_write_text
from stamen.shared.config import TrainingSpec

from ..hooks import TrainingHook, TrainingRound

PACE_FILE = "pace.json"  # seconds per local step measured in this device's last round


class RoundDeclined(RuntimeError):
    """This device will not run the round; the message says which limit it would break."""


@dataclass(frozen=True)
class ResourceGuards:
    max_local_steps: int | None = None
    max_round_seconds: float | None = None
    max_memory_mb: float | None = None

    @classmethod
    def from_node_config(cls, node: Mapping[str, object]) -> ResourceGuards:
        def number(key: str, cast):
            return cast(node[key]) if key in node else None

        return cls(number("max-local-steps", int), number("max-round-seconds", float), number("max-memory-mb", float))

    def check(self, training: TrainingSpec, state_dir: Path | None) -> None:
        """Raise :class:`RoundDeclined` if the round asks more than this device allows."""
        if self.max_local_steps is not None and training.local_steps > self.max_local_steps:
            raise RoundDeclined(f"declined: the round asks {training.local_steps} local steps, "
                                f"this device allows {self.max_local_steps}")
        if self.max_memory_mb is not None and peak_memory_mb() > self.max_memory_mb:
            raise RoundDeclined(f"declined: this process already peaked at {peak_memory_mb():.0f} MB, "
                                f"over the device's {self.max_memory_mb:.0f} MB")
        pace = _read_pace(state_dir)
        if self.max_round_seconds is not None and pace is not None:
            expected = pace * training.local_steps
            if expected > self.max_round_seconds:
                raise RoundDeclined(f"declined: {training.local_steps} steps at the last measured {pace:.2f} s/step "
                                    f"take about {expected:.0f} s, over the device's {self.max_round_seconds:.0f} s")


class ResourceGuardHook(TrainingHook):
    """Declines a round over the device's limits before any work; records the round's pace after it."""

    def before_training(self, training_round: TrainingRound) -> None:
        guards = ResourceGuards.from_node_config(training_round.context.node_config)
        guards.check(training_round.config.training, training_round.setup.store.folder)

    def after_training(self, training_round: TrainingRound) -> None:
        result = training_round.result
        record_pace(training_round.setup.store.folder, result.seconds, result.steps)


def record_pace(state_dir: Path | None, seconds: float, steps: int) -> None:
    if state_dir is not None and steps > 0:
        atomic_write_text(state_dir / PACE_FILE, json.dumps({"seconds_per_step": seconds / steps}))


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _read_pace(state_dir: Path | None) -> float | None:
    path = state_dir / PACE_FILE if state_dir else None
    if path is None or not path.is_file():
        return None
    return float(json.loads(path.read_text())["seconds_per_step"])
