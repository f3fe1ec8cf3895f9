"""Several runs side by side, each over one or more seeds: ``compare.md``, ``compare.json`` and plots.

A compared run is a name with one run folder per seed. Each number in the table is the mean over seeds
± its 95% interval (:mod:`stamen.simulations.intervals`); against a baseline run, each run is compared
seed by seed (forgetting cut, gain kept, extra client time, the difference in personal held-out loss), and
a difference whose interval contains 0 is marked not significant. ``compare.json`` keeps every seed's row.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from stamen.shared.atomic import atomic_write_text
from stamen.shared.metrics import PERSONAL_HELDOUT_LOSS

from .intervals import Interval, difference_text, fact_matrix, over_seeds_and_items, paired
from .report import RunRecord, markdown_table, pyplot, save_figure

SHOWN = {  # column -> (header, decimals): the table a person reads (compare.json has every measured key)
    "personal_end": ("personal held-out loss (end)", 4),
    "heldout_end": ("global held-out loss (end)", 4),
    "mean_client_gain": ("client gain", 4),
    "retention_end": ("retention (end)", 3),
    "retention_mean": ("retention (mean over rounds)", 3),
    "retention_facts": ("retention (over facts and seeds)", 3),
    "forgetting_mean": ("forgetting (mean over rounds)", 4),
    "backward_transfer_end": ("backward transfer (end)", 4),
    "current_stage_end": ("current-stage held-out (end)", 4),
    "past_stage_end": ("past-stage held-out (end)", 4),
    "client_seconds": ("client s/round", 2),
    "rounds_to_target": ("rounds to target", 1),
}
AGAINST_BASELINE = {  # column -> (header, decimals)
    "personal_end_change": ("personal held-out vs baseline", 4),
    "backward_transfer_change": ("backward transfer vs baseline", 4),
    "forgetting_cut": ("forgetting cut %", 1),
    "retention_loss_cut": ("retention loss cut %", 1),
    "retention_loss_cut_facts": ("retention loss cut % (over facts and seeds)", 1),
    "gain_kept": ("gain kept %", 1),
    "extra_client_time": ("extra client time %", 1),
}


def compare_runs(
    runs: dict[str, Sequence[Path]], out: Path, baseline: str | None = None, target: float | None = None
) -> Path:
    """Compare named runs (one folder per seed; seeds paired by position) and write the table and plots under
    ``out``; ``target`` is a personal held-out loss whose cost (rounds, bytes, client seconds) is reported.
    Returns the table's file."""
    if baseline is not None and baseline not in runs:
        raise ValueError(f"baseline run {baseline!r} is not among the runs compared: {sorted(runs)}")
    records = {name: [RunRecord.read(folder) for folder in folders] for name, folders in runs.items()}
    per_seed = {name: [record.summary_row(target) for record in seeds] for name, seeds in records.items()}
    facts = {name: [record.fact_retention() for record in seeds] for name, seeds in records.items()}
    rows = [{**summarise(name, seed_rows), **fact_retention(facts[name])} for name, seed_rows in per_seed.items()]
    if baseline is not None:
        rows = [{**row, **against_baseline(per_seed[row["run"]], per_seed[baseline]),
                 **retention_loss_cut(facts[row["run"]], facts[baseline])} for row in rows]
    out.mkdir(parents=True, exist_ok=True)
    _plot_curves(records, out / "compare.png")
    forgetting_measured = any(row.get("forgetting_mean") and row.get("mean_client_gain") for row in rows)
    if forgetting_measured:  # runs without the forgetting probes would leave an empty plot
        _plot_gain_vs_forgetting(rows, out / "gain_vs_forgetting.png")
    retention_measured = any(row.get("retention_mean") for row in rows)
    if retention_measured:
        _plot_gain_vs_retention(records, out / "gain_vs_retention.png")
    if target is not None:
        _plot_cost_to_target(records, target, out / "cost_to_target.png")
    seeds = sorted({row["seeds"] for row in rows})
    lines = [
        "# Runs compared", "",
        f"Each cell: mean over {'/'.join(map(str, seeds))} seeds ± its 95% interval (Student t); against the "
        f"baseline, differences are paired by seed (over the seeds both ran) and marked (n.s.) where their interval"
        f" contains 0."
        if baseline else f"Each cell: mean over {'/'.join(map(str, seeds))} seeds ± its 95% interval (Student t).",
        "", "![held-out loss](compare.png)", "",
        *(["![personal gain vs forgetting](gain_vs_forgetting.png)", ""] if forgetting_measured else []),
        *(["![personal gain against retention, round by round](gain_vs_retention.png)", ""]
          if retention_measured else []),
        table(rows, baseline), *_baseline_note(rows, baseline), *_target_note(target),
    ]
    atomic_write_text(out / "compare.md", "\n".join(lines) + "\n")
    atomic_write_text(out / "compare.json", json.dumps(
        [{**row, "per_seed": per_seed[row["run"]], "per_fact": facts[row["run"]]} for row in rows], indent=2))
    return out / "compare.md"


def seed_folders(folder: Path) -> list[Path]:
    """The run folders of one compared run: ``folder``'s ``seed-<n>/`` in seed order, or ``folder`` itself."""
    seeds = [path for path in folder.glob("seed-*") if path.name.removeprefix("seed-").isdigit()]
    return sorted(seeds, key=lambda path: int(path.name.removeprefix("seed-"))) or [folder]


def summarise(name: str, seed_rows: list[dict]) -> dict:
    """One compared run: every numeric key as an interval over the seeds that measured it."""
    keys = [key for key in seed_rows[0] if key != "run"]
    row: dict = {"run": name, "seeds": len(seed_rows)}
    for key in keys:
        values = [r[key] for r in seed_rows if isinstance(r.get(key), int | float)]
        row[key] = Interval.of(values).to_json() if values else None
    return row


def fact_retention(per_seed: list[dict[str, float]]) -> dict:
    """Retention over the probe facts every seed measured, with its interval over facts and seeds."""
    facts, matrix = fact_matrix(per_seed)
    if not facts:
        return {}
    interval = over_seeds_and_items(lambda s, f: float(matrix[np.ix_(s, f)].mean()), *matrix.shape)
    return {"retention_facts": {**interval.to_json(), "facts": len(facts)}}


def retention_loss_cut(run: list[dict[str, float]], base: list[dict[str, float]]) -> dict:
    """Of the probe answers the baseline lost, the share the run kept, seed by seed and fact by fact, over the seeds
    and facts both measured; its interval resamples both."""
    seeds = min(len(run), len(base))
    facts, matrix = fact_matrix([*run[:seeds], *base[:seeds]])
    if not facts or not seeds:
        return {}
    ours, theirs = matrix[:seeds], matrix[seeds:]

    def cut(s: np.ndarray, f: np.ndarray) -> float:
        lost = 1.0 - theirs[np.ix_(s, f)].mean()
        return 100 * (ours[np.ix_(s, f)].mean() - theirs[np.ix_(s, f)].mean()) / lost if lost > 0 else math.nan

    interval = over_seeds_and_items(cut, seeds, len(facts))
    return {"retention_loss_cut_facts": interval.to_json()} if math.isfinite(interval.mean) else {}


def against_baseline(rows: list[dict], base: list[dict]) -> dict:
    """A run's seeds against the baseline's, seed by seed: each measure's interval over seeds."""

    def percent(measure: Callable[[dict, dict], float | None]) -> dict | None:
        values = [value for row, b in zip(rows, base, strict=True) if (value := measure(row, b)) is not None]
        return Interval.of(values).to_json() if values else None

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return None if numerator is None or denominator is None or denominator <= 0 else 100 * numerator / denominator

    def minus(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else a - b

    paired_seeds = min(len(rows), len(base))  # seed n against seed n: over the seeds both ran
    rows, base = rows[:paired_seeds], base[:paired_seeds]
    def change(key: str) -> dict | None:
        pairs = [(r[key], b[key]) for r, b in zip(rows, base, strict=True)
                 if r.get(key) is not None and b.get(key) is not None]
        return paired(*zip(*pairs, strict=True)).to_json() if pairs else None

    return {
        "personal_end_change": change("personal_end"),
        "backward_transfer_change": change("backward_transfer_end"),  # above 0: older stages kept better
        # a baseline that did not forget (<= 0) has nothing to cut: no value rather than a meaningless ratio
        "forgetting_cut": percent(lambda r, b: ratio(minus(b["forgetting_mean"], r["forgetting_mean"]),
                                                     b["forgetting_mean"])),
        # of the probe questions the baseline stopped answering, the share this run still answers
        "retention_loss_cut": percent(lambda r, b: ratio(minus(r.get("retention_mean"), b.get("retention_mean")),
                                                         minus(1.0, b.get("retention_mean")))),
        "gain_kept": percent(lambda r, b: ratio(r["mean_client_gain"], b["mean_client_gain"])),
        "extra_client_time": percent(lambda r, b: ratio(minus(r["client_seconds"], b["client_seconds"]),
                                                        b["client_seconds"])),
    }


def table(rows: list[dict], baseline: str | None) -> str:
    """The Markdown table: intervals as ``mean ± half``; paired differences signed, (n.s.) where not significant."""
    shown = {key: column for key, column in SHOWN.items()
             if any(row.get(key) or (key == "rounds_to_target" and row.get("reached_target")) for row in rows)}
    compared = {key: column for key, column in AGAINST_BASELINE.items()
                if baseline and any(row.get(key) for row in rows)}
    cells = []
    for row in rows:
        cell = {"run": row["run"] + (" (baseline)" if row["run"] == baseline else ""), "seeds": row["seeds"]}
        cell |= {header: "" if row.get(key) is None else Interval.from_json(row[key]).text(digits)
                 for key, (header, digits) in shown.items()}
        if row.get("reached_target"):  # how many seeds reached the target at all
            header = SHOWN["rounds_to_target"][0]
            reached = round(row["reached_target"]["mean"] * row["seeds"])
            cell[header] = f"{cell[header] or 'not reached'} ({reached}/{row['seeds']} seeds)"
        for key, (header, digits) in compared.items():
            cell[header] = "" if row["run"] == baseline else _difference(key, row.get(key), digits)
        cells.append(cell)
    return markdown_table(cells)


def _difference(key: str, value: dict | None, digits: int) -> str:
    """Percentages against 0 (forgetting cut, extra time) or 100 (gain kept); a loss change against 0."""
    if value is None:
        return ""
    interval = Interval.from_json(value)
    if key == "gain_kept":  # significant when the kept share differs from all of it
        shifted = Interval(interval.mean - 100.0, interval.half_width, interval.n)
        return interval.text(digits) + ("" if shifted.significant() else " (n.s.)")
    return difference_text(interval, digits)


def _baseline_note(rows: list[dict], baseline: str | None) -> list[str]:
    """A comparison of forgetting protection means something only where the baseline forgot: each measure says
    whether it did."""
    base = next((row for row in rows if row["run"] == baseline), None)
    if base is None:
        return []
    notes = []
    forgetting, retention = base.get("forgetting_mean"), base.get("retention_mean")
    if forgetting is not None:
        shown = Interval.from_json(forgetting).text()
        notes.append(f"The baseline's general-text loss rose by {shown} over the base's own (forgetting cut "
                     "reported)." if forgetting["mean"] > 0 else
                     f"The baseline did not forget on general text (forgetting {shown} <= 0): there is nothing "
                     "to cut, so no forgetting cut is reported.")
    if retention is not None:
        shown = Interval.from_json(retention).text()
        notes.append(f"The baseline kept {shown} of the probe questions the base answers (mean over rounds; "
                     "retention loss cut reported)." if retention["mean"] < 1 else
                     "The baseline kept every probe question the base answers: no retention loss cut.")
    return ["", *notes] if notes else []


def _target_note(target: float | None) -> list[str]:
    if target is None:
        return []
    return ["", "![cost to target](cost_to_target.png)", "",
            f"Target: personal held-out loss <= {target:g}. Rounds to target are averaged over the seeds that "
            f"reached it (`compare.json`: `reached_target`, bytes and client seconds to it)."]


def _plot_curves(records: dict[str, list[RunRecord]], path: Path) -> None:
    """Each run's held-out loss per round (the personal model where there is one): mean over seeds with the
    interval as error bars."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, seeds in records.items():
        curves = [dict(record.curve(PERSONAL_HELDOUT_LOSS.eval_mean) or record.curve()) for record in seeds]
        rounds = sorted(set.intersection(*(set(curve) for curve in curves))) if curves else []
        if rounds:
            intervals = [Interval.of([curve[r] for curve in curves]) for r in rounds]
            axis.errorbar(rounds, [i.mean for i in intervals], yerr=[i.half_width or 0.0 for i in intervals],
                          marker="o", capsize=3, label=name)
    axis.set(xlabel="round", ylabel="held-out loss of the model each client uses", title="runs compared (95% CI)")
    if axis.lines:
        axis.legend(fontsize="small")
    save_figure(figure, path)


def _plot_cost_to_target(records: dict[str, list[RunRecord]], target: float, path: Path) -> None:
    """The loss of the model each client uses against what it cost so far (bytes moved, client seconds), each
    point a round's mean over seeds with the loss's interval; the target as a line."""
    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    for name, seeds in records.items():
        rounds = [{row["round"]: row[seeds[0].personal_key()] for row in record.rounds
                   if row.get(record.personal_key()) is not None} for record in seeds]
        costs = [{r: (moved, spent) for r, moved, spent in record.cumulative_cost()} for record in seeds]
        common = sorted(set.intersection(*(set(r) for r in rounds))) if rounds else []
        if not common:
            continue
        losses = [Interval.of([seed[r] for seed in rounds]) for r in common]
        for axis, index, scale in ((axes[0], 0, 1e6), (axes[1], 1, 1.0)):
            spent = [sum(seed[r][index] for seed in costs) / len(costs) / scale for r in common]
            axis.errorbar(spent, [i.mean for i in losses], yerr=[i.half_width or 0.0 for i in losses], marker="o",
                          capsize=3, label=name)
    for axis, label in ((axes[0], "MB moved (all clients, up + down)"), (axes[1], "client seconds (all clients)")):
        axis.axhline(target, color="black", linewidth=0.8, linestyle="--")
        axis.set(xlabel=label)
    axes[0].set(ylabel="held-out loss of the model each client uses", title=f"cost to loss {target:g} (95% CI)")
    if axes[0].lines:
        axes[0].legend(fontsize="small")
    save_figure(figure, path)


def _plot_gain_vs_forgetting(rows: list[dict], path: Path) -> None:
    """One point per run: mean personal gain (up is better) against mean forgetting (left is better), with
    intervals."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        forgetting, gain = row.get("forgetting_mean"), row.get("mean_client_gain")
        if forgetting and gain:
            axis.errorbar(forgetting["mean"], gain["mean"], xerr=forgetting["ci95"] or 0.0, yerr=gain["ci95"] or 0.0,
                          marker="o", capsize=3)
            axis.annotate(row["run"], (forgetting["mean"], gain["mean"]), textcoords="offset points", xytext=(4, 4),
                          fontsize="small")
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set(xlabel="forgetting: general-text loss - base alone, mean over rounds (lower is better)",
             ylabel="mean personal gain (higher is better)", title="personal gain vs forgetting (95% CI)")
    save_figure(figure, path)


def _plot_gain_vs_retention(records: dict[str, list[RunRecord]], path: Path) -> None:
    """Each run's path round by round: its personal gain (held-out loss before training minus the model each
    client uses, mean over seeds) against its retention of the base's known facts, so a protection that keeps the
    facts only by giving up the gain shows as it does."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for name, seeds in records.items():
        paths = [record.gain_and_retention() for record in seeds]
        rounds = sorted(set.intersection(*(set(seed) for seed in paths))) if paths else []
        if rounds:
            retention = [sum(seed[r][1] for seed in paths) / len(paths) for r in rounds]
            gain = [sum(seed[r][0] for seed in paths) / len(paths) for r in rounds]
            axis.plot(retention, gain, marker="o", label=name)
            axis.annotate(f"r{rounds[-1]}", (retention[-1], gain[-1]), textcoords="offset points", xytext=(3, 3),
                          fontsize="x-small")
    axis.set(xlabel="retention of the base's known facts (higher is better)",
             ylabel="personal gain (higher is better)", title="gain against retention, round by round")
    if axis.lines:
        axis.legend(fontsize="small")
    save_figure(figure, path)
