"""A grid of runs, rules x attacks x malicious fractions, judged side by side over seeds.

Each cell is one ``stamen simulate`` run per seed (``<out>/<cell>/seed-<n>/``) with the same settings; seed
``k`` gives every cell the same partitions, sampled clients and adapter init, so an attacked cell is compared
with its rule's clean cell seed by seed (``harm``). A run that already finished is skipped, so a sweep resumes
where it stopped. The results are one Markdown table (means ± 95% intervals) and one heat map per metric.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from stamen.server.checkpoint import saved_rounds
from stamen.shared.atomic import atomic_write_text
from stamen.shared.commands import console, read_toml
from stamen.shared.config import ConfigError
from stamen.shared.metrics import HELDOUT_LOSS, MALICIOUS
from stamen.shared.process_guard import stop_tree, stopping_started_processes
from stamen.shared.run_folder import RunFolder

from .intervals import Interval, difference_text
from .report import pyplot

METRICS = {  # column -> what a reader should know about it
    "honest_heldout_loss": "clean held-out loss of honest clients, last round (lower is better)",
    "harm": "honest clients' held-out loss minus theirs in the same rule's clean run, paired by seed (above 0: hurt)",
    "attack_success_rate": "share of trigger prompts answered with the backdoor target (lower is better)",
    "malicious_admitted": "share of malicious updates admitted, over all rounds and seeds (admitted/sent)",
}


@dataclass(frozen=True)
class SweepSpec:
    rules: tuple[str, ...]
    attacks: tuple[str, ...]
    fractions: tuple[float, ...]
    clients: int
    rounds: int
    rule_options: dict[str, str] = field(default_factory=dict)  # rule -> aggregation-options
    attack_options: dict[str, str] = field(default_factory=dict)  # attack -> attack-options
    config: dict[str, object] = field(default_factory=dict)  # flat keys for every cell
    seeds: int = 1

    @classmethod
    def from_toml(cls, path: Path) -> SweepSpec:
        data = read_toml(path)
        sweep = data.get("sweep", {})
        try:
            spec = cls(tuple(sweep["rules"]), tuple(sweep["attacks"]), tuple(float(f) for f in sweep["fractions"]),
                       int(sweep.get("clients", 10)), int(sweep.get("rounds", 2)), dict(data.get("rule-options", {})),
                       dict(data.get("attack-options", {})), dict(data.get("config", {})), int(sweep.get("seeds", 1)))
        except KeyError as missing:
            raise ConfigError(
                f"{path}: [sweep] needs 'rules', 'attacks' and 'fractions' ({missing} is missing)"
            ) from None
        if spec.seeds < 1:
            raise ConfigError(f"{path}: [sweep] seeds must be at least 1, not {spec.seeds}")
        return spec

    def seed_values(self) -> list[int]:
        first = int(self.config.get("seed", 0))
        return [first + k for k in range(self.seeds)]

    def cell_settings(self, rule: str, attack: str, fraction: float) -> dict[str, object]:
        """The flat config keys one cell's run is started with."""
        return {**self.config, "aggregation": rule, "aggregation-options": self.rule_options.get(rule, ""),
                "attack": attack, "attack-fraction": fraction, "attack-options": self.attack_options.get(attack, "")}

    def cells(self) -> list[tuple[str, str, float]]:
        """(rule, attack, fraction); a fraction of 0 is one clean cell per rule, whatever the attack."""
        cells = []
        for rule in self.rules:
            if 0.0 in self.fractions:
                cells.append((rule, "none", 0.0))
            cells += [(rule, attack, f) for attack in self.attacks for f in self.fractions if f > 0]
        return cells


def cell_id(rule: str, attack: str, fraction: float) -> str:
    return f"{rule}__{attack}__{fraction:g}"


def run_sweep(spec: SweepSpec, folder: Path, parallel: int = 1) -> list[dict]:
    """Run every unfinished cell and seed (``parallel`` at a time), then summarise all of them."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = [(cell, seed) for cell in spec.cells() for seed in spec.seed_values()]
    todo = [(cell, seed) for cell, seed in runs if not RunFolder(_run_dir(folder, cell, seed)).finished()]
    done = iter(range(1, len(todo) + 1))

    def run(cell: tuple[str, str, float], seed: int) -> str | None:
        started = time.perf_counter()
        _run_dir(folder, cell, seed).parent.mkdir(exist_ok=True)
        failure = simulate_in_subprocess({**spec.cell_settings(*cell), "seed": seed}, spec.clients, spec.rounds,
                                         folder / cell_id(*cell), f"seed-{seed}")
        console.print(f"[{next(done)}/{len(todo)}] {cell_id(*cell)} seed {seed}: {time.perf_counter() - started:.0f} s")
        return failure

    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool, stopping_started_processes():
        for failure in pool.map(lambda item: run(*item), todo):
            if failure:
                raise RuntimeError(failure)
    rows = summarise_cells(
        {cell: [summarise_run(_run_dir(folder, cell, seed)) for seed in spec.seed_values()] for cell in spec.cells()})
    atomic_write_text(folder / "sweep.json", json.dumps(rows, indent=2))
    atomic_write_text(folder / "sweep.md", markdown_table(rows))
    for metric in METRICS:
        heat_map(rows, metric, folder / f"heatmap-{metric}.png")
    return rows


def _run_dir(folder: Path, cell: tuple[str, str, float], seed: int) -> Path:
    return folder / cell_id(*cell) / f"seed-{seed}"


def simulate_in_subprocess(settings: dict, clients: int, rounds: int, folder: Path, run_id: str) -> str | None:
    """``stamen simulate`` as its own process (Ray and the base are torn down after each run),
    logging to ``folder/<run_id>.log``; returns why it failed, or None. A run a stopped sweep or comparison left
    with completed rounds is resumed from its checkpoint."""
    stamen, run_dir = str(Path(sys.executable).parent / "stamen"), folder / run_id
    if saved_rounds(run_dir):
        command = [stamen, "simulate", "--resume", str(run_dir)]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)  # what an attempt stopped before its first round left
        command = [stamen, "simulate", "--clients", str(clients), "--rounds", str(rounds)]
        for key, value in {**settings, "run-dir": str(folder), "run-id": run_id}.items():
            command += ["--set", f"{key}={value}"]
    log = folder / f"{run_id}.log"
    with log.open("w") as output, subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                                   env={**os.environ}) as run:
        try:
            code = run.wait()
        except BaseException:
            stop_tree(run.pid)  # SIGTERM first: the run ends cleanly (and resumably), SIGKILL after a grace
            raise
    return None if code == 0 else f"run {run_id} failed (exit {code}); see {log}"


def summarise_run(run_dir: Path) -> dict:
    """One seed of one cell: honest clients' last-round held-out loss and backdoor success, malicious counts."""
    rows = RunFolder(run_dir).rows()
    rounds = [r for r in rows if r["kind"] == "round"]
    last = rounds[-1]["round"]
    honest = [r for r in rows if r["kind"] == "client" and r["phase"] == "evaluate" and r["round"] == last
              and r.get("accepted") and not r.get(MALICIOUS.column)]
    success = [r["attack_success_rate"] for r in honest if "attack_success_rate" in r]
    return {
        "seed": int(run_dir.name.removeprefix("seed-")),
        "honest_heldout_loss": _mean([r[HELDOUT_LOSS.column] for r in honest]),
        "heldout_by_client": {r["client"]: r[HELDOUT_LOSS.column] for r in honest},
        "attack_success_rate": _mean(success),
        "malicious_sent": sum(r.get("malicious_replied", 0) for r in rounds),
        "malicious_admitted": sum(r.get("malicious_admitted", 0) for r in rounds),
    }


def summarise_cells(cells: dict[tuple[str, str, float], list[dict]]) -> list[dict]:
    """Per cell: means ± 95% intervals over seeds, and the harm against its rule's clean cell, paired by seed."""
    rows = []
    for (rule, attack, fraction), seeds in cells.items():
        clean = cells.get((rule, "none", 0.0))
        losses = [s["honest_heldout_loss"] for s in seeds]
        harm = None
        if clean is not None and fraction > 0 and None not in losses:
            harm = _interval([_harm(attacked, unattacked) for attacked, unattacked in zip(seeds, clean, strict=True)])
        sent, admitted = sum(s["malicious_sent"] for s in seeds), sum(s["malicious_admitted"] for s in seeds)
        rows.append({
            "rule": rule, "attack": attack, "fraction": fraction, "seeds": len(seeds),
            "honest_heldout_loss": _interval([v for v in losses if v is not None]),
            "harm": harm,
            "attack_success_rate": _interval([s["attack_success_rate"] for s in seeds
                                              if s["attack_success_rate"] is not None]),
            "malicious_admitted": {"admitted": admitted, "sent": sent} if sent else None,
            "per_seed": seeds,
        })
    return rows


def _harm(attacked: dict, clean: dict) -> float:
    """How much worse the attacked run's honest clients ended than the same clients in the clean run of the same
    seed (the clean run's other clients are the attacked run's attackers, so they are left out)."""
    honest = attacked["heldout_by_client"]
    return statistics.fmean(loss - clean["heldout_by_client"][client] for client, loss in honest.items())


def _interval(values: list[float]) -> dict | None:
    return Interval.of(values).to_json() if values else None


def markdown_table(rows: list[dict]) -> str:
    columns = ["rule", "attack", "fraction", "seeds", *METRICS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row, column) for column in columns) + " |" for row in rows]
    notes = [f"- `{name}`: {meaning}" for name, meaning in METRICS.items()]
    seeds = sorted({row["seeds"] for row in rows})
    return "\n".join([*lines, "", f"Means over {'/'.join(map(str, seeds))} seeds ± 95% interval (Student t); "
                                   "(n.s.): the interval contains 0.", *notes]) + "\n"


def _cell(row: dict, column: str) -> str:
    value = row[column]
    if column == "fraction":
        return f"{value:g}"
    if value is None:
        return ""
    if column == "malicious_admitted":
        return f"{value['admitted']}/{value['sent']}"
    if column == "harm":
        return difference_text(Interval.from_json(value))
    if isinstance(value, dict):
        return Interval.from_json(value).text()
    return str(value)


def heat_map(rows: list[dict], metric: str, path: Path) -> None:
    """Rules down, attack@fraction across, each cell its mean over seeds ± 95% interval; admitted counts are shown
    as the admitted share."""
    import numpy as np

    plt = pyplot()

    rules = list(dict.fromkeys(r["rule"] for r in rows))
    columns = list(dict.fromkeys(f"{r['attack']}@{r['fraction']:g}" for r in rows))
    grid = np.full((len(rules), len(columns)), np.nan)
    widths: dict[tuple[int, int], float] = {}
    for row in rows:
        at = (rules.index(row["rule"]), columns.index(f"{row['attack']}@{row['fraction']:g}"))
        grid[at] = _number(row[metric])
        if isinstance(row[metric], dict) and row[metric].get("ci95") is not None:
            widths[at] = row[metric]["ci95"]
    figure, axes = plt.subplots(figsize=(1.2 * len(columns) + 2.5, 0.6 * len(rules) + 1.8))
    image = axes.imshow(grid, cmap="viridis_r", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=40, ha="right")
    axes.set_yticks(range(len(rules)), rules)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            dark = image.norm(value) > 0.5  # viridis_r: high values are dark
            text = f"{value:.3g}" + (f"\n±{widths[i, j]:.2g}" if (i, j) in widths else "")
            axes.text(j, i, text, ha="center", va="center", color="white" if dark else "black", fontsize=8)
    figure.colorbar(image, ax=axes, label=metric)
    axes.set_title(METRICS[metric], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _number(value: dict | None) -> float:
    """A heat map's number: an interval's mean, or the admitted share."""
    if value is None:
        return float("nan")
    if "sent" in value:
        return value["admitted"] / value["sent"]
    return float(value["mean"])


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
