"""Named runs from one TOML, each run for every seed and compared side by side (``stamen compare PRESET.toml``).

A preset holds ``[compare]`` (clients, rounds, seeds, optional baseline run and target loss), ``[config]`` (flat
keys for every run) and one ``[runs.<name>]`` table of flat keys per run. Seed ``k`` of a run sets ``seed`` to
the preset's seed + k (adapter init, data order, partitions and client sampling follow it) and runs in
``<out>/<name>/seed-<seed>/``. Finished runs are skipped, so an interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from stamen.shared.commands import console, read_toml
from stamen.shared.config import ConfigError
from stamen.shared.process_guard import stopping_started_processes
from stamen.shared.run_folder import RunFolder

from .comparison import compare_runs
from .sweep import simulate_in_subprocess


@dataclass(frozen=True)
class Campaign:
    runs: dict[str, dict]  # name -> flat config keys (the shared [config] applied first)
    clients: int
    rounds: int
    baseline: str | None = None  # the run others are measured against (forgetting cut, gain kept, time)
    seeds: int = 1
    target: float | None = None  # a personal held-out loss: rounds, bytes and client seconds until reached

    @classmethod
    def from_toml(cls, path: Path) -> Campaign:
        data = read_toml(path)
        runs = data.get("runs", {})
        if not runs:
            raise ConfigError(f"{path}: no [runs.<name>] tables to compare")
        shared, settings = data.get("config", {}), data.get("compare", {})
        baseline = settings.get("baseline")
        if baseline is not None and baseline not in runs:
            raise ConfigError(f"{path}: [compare] baseline {baseline!r} names no [runs.<name>] table")
        seeds, target = int(settings.get("seeds", 1)), settings.get("target")
        if seeds < 1:
            raise ConfigError(f"{path}: [compare] seeds must be at least 1, not {seeds}")
        return cls({name: {**shared, **keys} for name, keys in runs.items()}, int(settings.get("clients", 4)),
                   int(settings.get("rounds", 3)), baseline, seeds, None if target is None else float(target))

    def seed_values(self, name: str) -> list[int]:
        first = int(self.runs[name].get("seed", 0))
        return [first + k for k in range(self.seeds)]


def run_campaign(campaign: Campaign, folder: Path) -> Path:
    """Run every unfinished run and seed under ``folder``, then write the comparison; returns compare.md."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = {name: [folder / name / f"seed-{seed}" for seed in campaign.seed_values(name)] for name in campaign.runs}
    todo = [(name, run_dir) for name, dirs in runs.items() for run_dir in dirs if not RunFolder(run_dir).finished()]
    with stopping_started_processes():
        for number, (name, run_dir) in enumerate(todo, start=1):
            started = time.perf_counter()
            run_dir.parent.mkdir(exist_ok=True)
            seed = int(run_dir.name.removeprefix("seed-"))
            failure = simulate_in_subprocess({**campaign.runs[name], "seed": seed}, campaign.clients,
                                             campaign.rounds, run_dir.parent, run_dir.name)
            if failure:
                raise RuntimeError(failure)
            console.print(f"[{number}/{len(todo)}] {name} seed {seed}: {time.perf_counter() - started:.0f} s")
    return compare_runs(runs, folder, campaign.baseline, campaign.target)
