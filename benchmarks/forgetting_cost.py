"""What forgetting protection costs a client: seconds per round against no protection, paired by seed in one run.

The tuning scenario's runs (``simulations/forgetting.toml``: its [config] and the named [runs]) are simulated with
evaluation off, so only what a client does to train is timed: local steps, building and keeping its replay, a
personal model's training. Runs are interleaved seed by seed (none, A, B, none, A, B, ...), so a drift of the
machine falls on every run alike, and the self-replay cache is emptied before each, so the one-off writing of a
device's pseudo-examples falls in the run that uses them (once in 3 rounds here; a device writes a new draw every
``replay-self-refresh`` = 5 rounds, so this counts it more often than a device pays it) and is shown apart as the
first-time part. The extra client time is the per-seed difference of client seconds per round against the
baseline run, with its 95% interval, with and without the first-time part.

    python benchmarks/forgetting_cost.py --runs none,self,self-wise-50 --seeds 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

from report import add_results_option, print_table, write_results

from stamen.shared.cache import cache_dir
from stamen.shared.metrics import SELF_REPLAY_WRITING_SECONDS
from stamen.simulations.intervals import Interval
from stamen.simulations.preset_comparison import Campaign
from stamen.simulations.report import RunRecord
from stamen.simulations.sweep import simulate_in_subprocess

TUNING = Path(__file__).resolve().parents[1] / "simulations" / "forgetting.toml"


def private_cache(folder: Path) -> Path:
    """A cache that shares every part of the user's (the assembled base, probe answers) but self-replay, which
    each timed run empties."""
    folder.mkdir(parents=True)
    for part in cache_dir().iterdir():
        if part.is_dir() and part.name != "self-replay":
            (folder / part.name).symlink_to(part)
    return folder


def timed_runs(campaign: Campaign, names: list[str], seeds: int, rounds: int, folder: Path
               ) -> dict[str, list[tuple[float, float]]]:
    """(client seconds per round, of which first-time: writing self-replay's draw) of every named run, one pair per
    seed, run in interleaved order."""
    seconds: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for seed in range(seeds):
        for name in names:
            shutil.rmtree(cache_dir("self-replay"), ignore_errors=True)
            settings = {**campaign.runs[name], "seed": seed, "fraction-evaluate": 0.0}
            failure = simulate_in_subprocess(settings, campaign.clients, rounds, folder, f"{name}-{seed}")
            if failure:
                raise RuntimeError(failure)
            run = RunRecord.read(folder / f"{name}-{seed}")
            spent = run.client_seconds()
            if spent is None:
                raise RuntimeError(f"{name} seed {seed}: no client trained, nothing to time")
            trained = [row for row in run.clients if row.get("phase") == "train" and row.get("accepted")]
            first_time = sum(row.get(SELF_REPLAY_WRITING_SECONDS.column, 0.0) for row in trained) / len(trained)
            seconds[name].append((spent, first_time))
            print(f"{name} seed {seed}: {spent:.2f} client s/round, {first_time:.2f} of them first-time", flush=True)
    return seconds


def cost_rows(seconds: dict[str, list[tuple[float, float]]], baseline: str) -> list[dict]:
    """Per run: client seconds per round, the first-time part, and the extra over the baseline with and without
    it (per-seed differences, 95% intervals)."""
    base = [total for total, _ in seconds[baseline]]

    def extra(values: list[float]) -> Interval:
        return Interval.of([100 * (v - b) / b for v, b in zip(values, base, strict=True)])

    rows = []
    for name, pairs in seconds.items():
        totals, recurring = [t for t, _ in pairs], [t - first for t, first in pairs]
        with_first, without = (None, None) if name == baseline else (extra(totals), extra(recurring))
        rows.append({"run": name, "seeds": len(pairs), "client s/round": Interval.of(totals).text(2),
                     "first-time s/round": Interval.of([first for _, first in pairs]).text(2),
                     "extra client time %": "" if with_first is None else with_first.text(1),
                     "extra without first-time %": "" if without is None else without.text(1),
                     "extra_client_time": None if with_first is None else with_first.to_json(),
                     "extra_recurring_time": None if without is None else without.to_json()})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", type=Path, default=TUNING)
    parser.add_argument("--runs", default="none,self,self-distill,self-wise-50",
                        help="comma-separated [runs.<name>] of the preset; the first is the baseline")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rounds", type=int, help="the preset's rounds unless given")
    parser.add_argument("--clients", type=int, help="the preset's clients unless given")
    parser.add_argument("--name", default="forgetting_cost", help="results/<name>.json")
    add_results_option(parser)
    args = parser.parse_args()
    campaign = Campaign.from_toml(args.preset)
    names = args.runs.split(",")
    unknown = [name for name in names if name not in campaign.runs]
    if unknown:
        parser.error(f"{args.preset} has no [runs.<name>] for {unknown}; it has {sorted(campaign.runs)}")
    if args.clients:
        campaign = Campaign(campaign.runs, args.clients, campaign.rounds, campaign.baseline, campaign.seeds)
    rounds = args.rounds or campaign.rounds
    with tempfile.TemporaryDirectory(prefix="stamen-forgetting-cost-") as scratch:
        os.environ["STAMEN_CACHE"] = str(private_cache(Path(scratch) / "cache"))
        seconds = timed_runs(campaign, names, args.seeds, rounds, Path(scratch))
    rows = cost_rows(seconds, names[0])
    print_table([{k: v for k, v in row.items() if not k.startswith("extra_")} for row in rows])
    write_results(args.name, rows, args.results, preset=str(args.preset.name), clients=campaign.clients, rounds=rounds,
                  seeds=args.seeds, baseline=names[0], evaluation="off", cpus=os.cpu_count())


if __name__ == "__main__":
    main()
