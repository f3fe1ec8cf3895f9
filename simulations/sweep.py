"""A grid of runs, rules x attacks x malicious fractions, judged side by side.

Each cell is one ``stamen simulate`` run in the sweep's folder with the same seed and
settings; a cell whose run already finished is skipped, so a sweep resumes where it
stopped. The results are one Markdown table and one heat map per metric.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from stamen.shared.atomic import atomic_write_text
from stamen.shared.commands import read_toml
from stamen.shared.run_folder import RunFolder

from .report import format_cell, pyplot

METRICS = {  # column -> what a reader should know about it
    "honest_heldout_loss": "clean held-out loss of honest clients, last round (lower is better)",
    "attack_success_rate": "share of trigger prompts answered with the backdoor target (lower is better)",
    "malicious_admitted": "malicious updates admitted over all rounds / sent",
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

    @classmethod
    def from_toml(cls, path: Path) -> SweepSpec:
        data = read_toml(path)
        sweep = data.get("sweep", {})
        try:
            return cls(tuple(sweep["rules"]), tuple(sweep["attacks"]), tuple(float(f) for f in sweep["fractions"]),
                       int(sweep.get("clients", 10)), int(sweep.get("rounds", 2)), dict(data.get("rule-options", {})),
                       dict(data.get("attack-options", {})), dict(data.get("config", {})))
        except KeyError as missing:
            raise ValueError(
                f"{path}: [sweep] needs 'rules', 'attacks' and 'fractions' ({missing} is missing)"
            ) from None

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
    """Run every unfinished cell (``parallel`` at a time), then summarise all of them."""
    folder.mkdir(parents=True, exist_ok=True)
    todo = [cell for cell in spec.cells() if not RunFolder(folder / cell_id(*cell)).finished()]
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        for failure in pool.map(lambda cell: _run_cell(spec, folder, *cell), todo):
            if failure:
                raise RuntimeError(failure)
    rows = [summarise_cell(folder / cell_id(*cell), *cell) for cell in spec.cells()]
    atomic_write_text(folder / "sweep.json", json.dumps(rows, indent=2))
    atomic_write_text(folder / "sweep.md", markdown_table(rows))
    for metric in METRICS:
        heat_map(rows, metric, folder / f"heatmap-{metric}.png")
    return rows


def _run_cell(spec: SweepSpec, folder: Path, rule: str, attack: str, fraction: float) -> str | None:
    return simulate_in_subprocess(spec.cell_settings(rule, attack, fraction), spec.clients, spec.rounds, folder,
                                  cell_id(rule, attack, fraction))


def simulate_in_subprocess(settings: dict, clients: int, rounds: int, folder: Path, run_id: str) -> str | None:
    """``stamen simulate`` as its own process (Ray and the base are torn down after each run),
    logging to ``folder/<run_id>.log``; returns why it failed, or None."""
    command = [
        str(Path(sys.executable).parent / "stamen"),
        "simulate",
        "--clients",
        str(clients),
        "--rounds",
        str(rounds),
    ]
    for key, value in {**settings, "run-dir": str(folder), "run-id": run_id}.items():
        command += ["--set", f"{key}={value}"]
    log = folder / f"{run_id}.log"
    with log.open("w") as output:
        code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env={**os.environ}).returncode
    return None if code == 0 else f"run {run_id} failed (exit {code}); see {log}"


def summarise_cell(run_dir: Path, rule: str, attack: str, fraction: float) -> dict:
    rows = RunFolder(run_dir).rows()
    rounds = [r for r in rows if r["kind"] == "round"]
    last = rounds[-1]["round"]
    honest = [r for r in rows if r["kind"] == "client" and r["phase"] == "evaluate" and r["round"] == last
              and r.get("accepted") and not r.get("malicious")]
    sent = sum(r.get("malicious_replied", 0) for r in rounds)
    admitted = sum(r.get("malicious_admitted", 0) for r in rounds)
    success = [r["attack_success_rate"] for r in honest if "attack_success_rate" in r]
    return {
        "rule": rule, "attack": attack, "fraction": fraction,
        "honest_heldout_loss": _mean([r["heldout_loss"] for r in honest]),
        "attack_success_rate": _mean(success),
        "malicious_admitted": f"{admitted}/{sent}" if sent else "",
    }


def markdown_table(rows: list[dict]) -> str:
    columns = ["rule", "attack", "fraction", *METRICS]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append(
            "| " + " | ".join(f"{row[c]:g}" if c == "fraction" else format_cell(row[c]) for c in columns) + " |"
        )
    notes = [f"- `{name}`: {meaning}" for name, meaning in METRICS.items()]
    return "\n".join([*lines, "", *notes]) + "\n"


def heat_map(rows: list[dict], metric: str, path: Path) -> None:
    """Rules down, attack@fraction across; admitted counts are shown as the admitted share."""
    import numpy as np

    plt = pyplot()

    rules = list(dict.fromkeys(r["rule"] for r in rows))
    columns = list(dict.fromkeys(f"{r['attack']}@{r['fraction']:g}" for r in rows))
    grid = np.full((len(rules), len(columns)), np.nan)
    for row in rows:
        grid[rules.index(row["rule"]), columns.index(f"{row['attack']}@{row['fraction']:g}")] = _number(row[metric])
    figure, axes = plt.subplots(figsize=(1.2 * len(columns) + 2.5, 0.6 * len(rules) + 1.8))
    image = axes.imshow(grid, cmap="viridis_r", aspect="auto")
    axes.set_xticks(range(len(columns)), columns, rotation=40, ha="right")
    axes.set_yticks(range(len(rules)), rules)
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            dark = image.norm(value) > 0.5  # viridis_r: high values are dark
            axes.text(j, i, f"{value:.4g}", ha="center", va="center", color="white" if dark else "black", fontsize=8)
    figure.colorbar(image, ax=axes, label=metric)
    axes.set_title(METRICS[metric], fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def _number(value: object) -> float:
    if isinstance(value, str):
        if "/" not in value:
            return float("nan")
        admitted, sent = value.split("/")
        return int(admitted) / int(sent)
    return float("nan") if value is None else float(value)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None
