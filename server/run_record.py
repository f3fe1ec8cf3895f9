"""The run folder a person opens: resolved config, per-round/per-client metrics, summary, adapter."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from stamen.shared.atomic import atomic_write_bytes, atomic_write_text
from stamen.shared.config import RunConfig
from stamen.shared.run_folder import RunFolder


def new_run_id() -> str:
    """Sortable and unique enough for one person's runs folder."""
    return time.strftime("%Y%m%d-%H%M%S") + f"-{np.random.default_rng().integers(16**4):04x}"


class RunRecorder:
    """Appends one JSON line per client result and per round to ``metrics.jsonl`` (and, with ``tensorboard``,
    their numbers to TensorBoard event files in ``tensorboard/``)."""

    def __init__(self, run_dir: Path, config: RunConfig, meta: dict[str, Any], resume_at: int | None = None) -> None:
        """Start a run folder, or continue one from byte ``resume_at`` of its metrics
        (what a crashed round wrote after the last checkpoint is cut off)."""
        self.folder = RunFolder(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.folder.config, json.dumps({"config": config.to_flat(), **meta}, indent=2))
        path = self.folder.metrics
        self.rounds: list[dict[str, Any]] = []
        if resume_at is None:
            path.write_text("")
        else:
            with path.open("r+b") as handle:
                handle.truncate(resume_at)
            self.rounds = [row for row in self.folder.rows() if row.get("kind") == "round"]
        self._metrics = path.open("a", encoding="utf-8")
        self._board = None
        if config.tensorboard:
            from .tensorboard_log import TensorBoardLog

            resumed = self.rounds[-1]["round"] if self.rounds else (0 if resume_at is not None else None)
            self._board = TensorBoardLog(self.folder.path / "tensorboard", resumed)
        self._started = time.perf_counter()

    def offset(self) -> int:
        """Bytes of metrics written so far (stored in the checkpoint)."""
        return self._metrics.tell()

    def write(self, row: dict[str, Any]) -> None:
        row = {**row, "time": round(time.time(), 3)}
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if row.get("kind") == "round":
            self.rounds.append(row)
        if self._board:
            self._board.write(row)

    def save_adapter(self, adapter: dict[str, np.ndarray]) -> None:
        from safetensors.numpy import save

        atomic_write_bytes(self.folder.global_adapter, save({k: np.ascontiguousarray(v) for k, v in adapter.items()}))

    def finish(self, summary: dict[str, Any]) -> None:
        self._metrics.close()
        if self._board:
            self._board.close()
        seconds = round(time.perf_counter() - self._started, 1)  # this process's share, if resumed
        atomic_write_text(
            self.folder.summary, json.dumps({**summary, "seconds": seconds, "rounds": self.rounds}, indent=2)
        )
