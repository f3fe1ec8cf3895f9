"""Named runs from one TOML, run once each and compared side by side (``stamen compare PRESET.toml``).

A preset holds ``[compare]`` (clients, rounds, optional baseline run), ``[config]`` (flat keys for every run) and
one ``[runs.<name>]`` table of flat keys per run. Finished runs are skipped, so an
interrupted comparison resumes where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from stamen.shared.commands import read_toml
from stamen.shared.run_folder import RunFolder

from .report import compare_runs
from .sweep import simulate_in_subprocess


@dataclass(frozen=True)
class Campaign:
    runs: dict[str, dict]  # name -> flat config keys (the shared [config] applied first)
    clients: int
    rounds: int
    baseline: str | None = None  # the run others are measured against (forgetting cut, gain kept, time)

    @classmethod
    def from_toml(cls, path: Path) -> Campaign:
        data = read_toml(path)
        runs = data.get("runs", {})
        if not runs:
            raise ValueError(f"{path}: no [runs.<name>] tables to compare")
        shared, settings = data.get("config", {}), data.get("compare", {})
        baseline = settings.get("baseline")
        if baseline is not None and baseline not in runs:
            raise ValueError(f"{path}: [compare] baseline {baseline!r} names no [runs.<name>] table")
        return cls({name: {**shared, **keys} for name, keys in runs.items()},
                   int(settings.get("clients", 4)), int(settings.get("rounds", 3)), baseline)


def run_campaign(campaign: Campaign, folder: Path) -> Path:
    """Run every unfinished run under ``folder``, then write the comparison; returns compare.md."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, settings in campaign.runs.items():
        if not RunFolder(folder / name).finished():
            failure = simulate_in_subprocess(settings, campaign.clients, campaign.rounds, folder, name)
            if failure:
                raise RuntimeError(failure)
    return compare_runs([folder / name for name in campaign.runs], folder, campaign.baseline)
