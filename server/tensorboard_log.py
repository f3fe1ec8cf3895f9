"""The run's metrics as TensorBoard event files beside ``metrics.jsonl`` (``tensorboard = true``), so
``tensorboard --logdir runs`` shows every run's curves: ``round/<metric>`` per round, and each client's
accepted results as ``<phase>/<metric>/<client>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SKIPPED = {"round", "time", "accepted"}  # the step, the wall clock, flags


class TensorBoardLog:
    """Scalars of metrics rows, by round. A resumed run drops what a crashed process logged after the
    checkpoint it resumes from (``purge_step``), as ``metrics.jsonl`` is cut there."""

    def __init__(self, folder: Path, resume_after_round: int | None = None) -> None:
        from torch.utils.tensorboard import SummaryWriter

        purge = resume_after_round + 1 if resume_after_round is not None else None
        self.writer = SummaryWriter(str(folder), purge_step=purge)

    def write(self, row: dict[str, Any]) -> None:
        kind, step = row.get("kind"), row.get("round")
        if step is None or (kind == "client" and not row.get("accepted")):
            return
        prefix, suffix = ("round", "") if kind == "round" else (str(row.get("phase")), f"/{row.get('client')}")
        for name, value in row.items():
            if name not in SKIPPED and isinstance(value, int | float) and not isinstance(value, bool):
                self.writer.add_scalar(f"{prefix}/{name}{suffix}", value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
