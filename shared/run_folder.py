"""One run's folder: the name of every file in it, and the one reader of its metrics.

A person opens these files (``metrics.jsonl`` one JSON line per client result and per
round, ``summary.json``, ``config.json``, ``report.md``); the server writes them, the
progress view, reports, sweeps and resumes read them back, all through this object.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import RunConfig
from .user_errors import UserError


class NotARunFolder(UserError, FileNotFoundError):
    """A folder given as a run lacks a file every run writes."""


@dataclass(frozen=True)
class RunFolder:
    path: Path

    @classmethod
    def of(cls, config: RunConfig) -> RunFolder:
        return cls(Path(config.run_dir) / config.run_id)

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def config(self) -> Path:
        """The resolved run config and what the server measured of the base (``base_stored_bytes``, ...)."""
        return self.path / "config.json"

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.safetensors"

    @property
    def global_adapter(self) -> Path:
        return self.path / "global_adapter.safetensors"

    @property
    def rounds(self) -> Path:
        """Each completed round's global adapter, for export."""
        return self.path / "rounds"

    @property
    def simulation(self) -> Path:
        """What ``stamen simulate --resume`` needs to start the same simulation again."""
        return self.path / "simulation.json"

    @property
    def clients(self) -> Path:
        """Simulated clients' device state, one folder each (a real device keeps its own)."""
        return self.path / "clients"

    def finished(self) -> bool:
        return self.summary.is_file()

    def rows(self) -> list[dict[str, Any]]:
        """Every complete line of ``metrics.jsonl`` (a line still being written is left out)."""
        text = self._required(self.metrics).read_text(encoding="utf-8")
        complete = text[: text.rfind("\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def record(self) -> dict[str, Any]:
        """``config.json``: ``{"config": flat run config, ...measurements}``."""
        return json.loads(self._required(self.config).read_text())

    def run_config(self) -> RunConfig:
        return RunConfig.from_flat(self.record()["config"])

    def summary_record(self) -> dict[str, Any]:
        return json.loads(self._required(self.summary).read_text())

    def require_run(self) -> RunFolder:
        """This folder, once it holds what every run writes first (``config.json``)."""
        self._required(self.config)
        return self

    def _required(self, path: Path) -> Path:
        if not path.is_file():
            raise NotARunFolder(f"{self.path} is not a run folder: it has no {path.name} (give a runs/<id> folder)")
        return path
