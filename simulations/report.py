"""What a person opens after a run: PNG plots and a Markdown report, and several runs side by side.

Everything is read back from the run folder (``metrics.jsonl``, ``summary.json``,
``config.json``), so a report can be rebuilt for any finished or interrupted run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stamen.shared.atomic import atomic_write_text
from stamen.shared.run_folder import RunFolder


@dataclass(frozen=True)
class RunRecord:
    """One run's rows, split the way the report reads them."""

    folder: Path
    rounds: list[dict]
    clients: list[dict]
    meta: dict
    seconds: float | None  # wall time the run took, once finished

    @classmethod
    def read(cls, folder: Path) -> RunRecord:
        run = RunFolder(folder)
        rows = run.rows()
        meta = run.record().get("config", {}) if run.config.is_file() else {}
        seconds = run.summary_record().get("seconds") if run.finished() else None
        return cls(
            folder,
            [r for r in rows if r.get("kind") == "round"],
            [r for r in rows if r.get("kind") == "client"],
            meta,
            seconds,
        )

    @property
    def name(self) -> str:
        return self.folder.name

    def curve(self, key: str = "eval_heldout_loss", before: str = "initial_heldout_loss") -> list[tuple[int, float]]:
        """(round, mean of ``key``), with round 0 the clients' ``before`` value (their loss before any training)."""
        points = [(r["round"], r[key]) for r in self.rounds if key in r]
        if points and self.rounds and before in self.rounds[0]:
            points.insert(0, (0, self.rounds[0][before]))
        return points

    def client_gains(self) -> dict[str, float]:
        """Per client: held-out loss before training minus its personal model's after the last evaluated round."""
        before = {r["client"]: r["initial_heldout_loss"] for r in self.clients
                  if r.get("phase") == "train" and "initial_heldout_loss" in r}
        after: dict[str, float] = {}
        for row in self.clients:
            if row.get("phase") == "evaluate" and row.get("accepted") and "heldout_loss" in row:
                # rows are in round order: the last one wins
                after[row["client"]] = row.get("personal_heldout_loss", row["heldout_loss"])
        return {client: before[client] - after[client] for client in sorted(before.keys() & after.keys())}

    def mean_forgetting(self) -> float | None:
        """Forgetting averaged over the evaluated rounds: steadier than the last round's alone."""
        values = [r["eval_forgetting"] for r in self.rounds if "eval_forgetting" in r]
        return sum(values) / len(values) if values else None

    def client_seconds(self) -> float | None:
        """Mean seconds a client spent on a training round: training plus keeping and building its replay."""
        spent = [r.get("train_seconds", 0.0) + r.get("replay_seconds", 0.0) for r in self.clients
                 if r.get("phase") == "train" and r.get("accepted")]
        return sum(spent) / len(spent) if spent else None

    def summary_row(self) -> dict:
        """The numbers a comparison table shows for this run."""
        curve, last = self.curve(), self.rounds[-1] if self.rounds else {}
        gains = list(self.client_gains().values())
        return {
            "run": self.name,
            "rounds": len(self.rounds),
            "heldout_start": curve[0][1] if curve else None,
            "heldout_end": curve[-1][1] if curve else None,
            "personal_end": last.get("eval_personal_heldout_loss"),
            "base_domain_end": last.get("eval_base_domain_loss"),
            "mean_client_gain": sum(gains) / len(gains) if gains else None,
            "forgetting_end": last.get("eval_forgetting"),
            "forgetting_mean": self.mean_forgetting(),
            **({"backward_transfer_end": last["eval_backward_transfer"]} if "eval_backward_transfer" in last else {}),
            "client_seconds": self.client_seconds(),
            "bytes_up_per_client": last.get("bytes_up_per_client"),
            "seconds": self.seconds,
        }


def write_report(folder: Path) -> Path:
    """``loss.png``, ``gains.png``, ``bytes.png`` and ``report.md`` embedding them; returns the report."""
    run = RunRecord.read(folder)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    _plot_curve(axis, run.curve(), "global model, held-out (clients' own data)")
    _plot_curve(axis, run.curve("eval_personal_heldout_loss"), "personal model, held-out")
    _plot_curve(axis, run.curve("eval_base_domain_loss", "initial_base_domain_loss"), "base-domain (forgetting probe)")
    axis.set(xlabel="round", ylabel="loss", title=f"{run.name}: loss per round")
    if axis.lines:  # a run without evaluation has no curves
        axis.legend()
    _save(figure, folder / "loss.png")

    gains = run.client_gains()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(list(gains.values()) or [0.0], bins=min(20, max(5, len(gains))))
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set(xlabel="held-out loss before - after (higher is better)", ylabel="clients",
             title="per-client personalisation gain")
    _save(figure, folder / "gains.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    rounds = [r["round"] for r in run.rounds]
    axis.bar([r - 0.2 for r in rounds], [r.get("bytes_in", 0) for r in run.rounds], width=0.4, label="up (all clients)")
    axis.bar(
        [r + 0.2 for r in rounds], [r.get("bytes_out", 0) for r in run.rounds], width=0.4, label="down (all clients)"
    )
    axis.set(xlabel="round", ylabel="bytes", title="traffic per round")
    axis.legend()
    _save(figure, folder / "bytes.png")

    atomic_write_text(folder / "report.md", _report_markdown(run, gains))
    return folder / "report.md"


def compare_runs(folders: list[Path], out: Path, baseline: str | None = None) -> Path:
    """Plots of every run's held-out loss per round and of personal gain against forgetting, and one
    Markdown table; with a ``baseline`` run, each run's forgetting cut, gain kept and extra client time
    against it. Returns the table's file."""
    runs = [RunRecord.read(folder) for folder in folders]
    out.mkdir(parents=True, exist_ok=True)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        _plot_curve(axis, run.curve("eval_personal_heldout_loss") or run.curve(), run.name)
    axis.set(xlabel="round", ylabel="mean held-out loss of the model each client uses", title="runs compared")
    if axis.lines:
        axis.legend(fontsize="small")
    _save(figure, out / "compare.png")
    rows = [run.summary_row() for run in runs]
    if baseline:
        rows = against_baseline(rows, baseline)
    _plot_gain_vs_forgetting(rows, out / "gain_vs_forgetting.png")
    table = markdown_table(rows)
    best = min((r for r in rows if r["personal_end"] is not None), key=lambda r: r["personal_end"], default=None)
    verdict = (
        f"\nLowest final held-out loss (personal model): **{best['run']}** ({best['personal_end']:.4f}).\n"
        if best
        else ""
    )
    atomic_write_text(out / "compare.md", f"# Runs compared\n\n![held-out loss](compare.png)\n\n"
                                          f"![personal gain vs forgetting](gain_vs_forgetting.png)\n\n{table}{verdict}")
    atomic_write_text(out / "compare.json", json.dumps(rows, indent=2))
    return out / "compare.md"


def against_baseline(rows: list[dict], baseline: str) -> list[dict]:
    """Each row with ``forgetting_cut`` (share of the baseline's forgetting, averaged over rounds,
    removed), ``gain_kept`` (share of its mean client gain kept) and ``extra_client_time``
    (relative), all in percent."""
    base = next((row for row in rows if row["run"] == baseline), None)
    if base is None:
        raise ValueError(f"baseline run {baseline!r} is not among the runs compared")

    def percent(numerator: float | None, denominator: float | None) -> float | None:
        return None if numerator is None or not denominator else round(100.0 * numerator / denominator, 1)

    return [
        {
            **row,
            "forgetting_cut": percent(_minus(base["forgetting_mean"], row["forgetting_mean"]), base["forgetting_mean"]),
            "gain_kept": percent(row["mean_client_gain"], base["mean_client_gain"]),
            "extra_client_time": percent(_minus(row["client_seconds"], base["client_seconds"]), base["client_seconds"]),
        }
        for row in rows
    ]


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _plot_gain_vs_forgetting(rows: list[dict], path: Path) -> None:
    """One point per run: mean personal gain (up is better) against forgetting averaged over rounds (left is better)."""
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4.5))
    for row in rows:
        if row["mean_client_gain"] is not None and row["forgetting_mean"] is not None:
            axis.scatter(row["forgetting_mean"], row["mean_client_gain"])
            axis.annotate(row["run"], (row["forgetting_mean"], row["mean_client_gain"]), textcoords="offset points",
                          xytext=(4, 4), fontsize="small")
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set(xlabel="forgetting: base-domain loss - base alone, mean over rounds (lower is better)",
             ylabel="mean personal gain (higher is better)", title="personal gain vs forgetting")
    _save(figure, path)


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _report_markdown(run: RunRecord, gains: dict[str, float]) -> str:
    summary = run.summary_row()
    rounds = [{"round": r["round"], "clients": r.get("clients_accepted"), "held-out loss": r.get("eval_heldout_loss"),
               "personal held-out loss": r.get("eval_personal_heldout_loss"),
               "base-domain loss": r.get("eval_base_domain_loss"), "forgetting": r.get("eval_forgetting"),
               "bytes up/client": r.get("bytes_up_per_client"),
               "rejected": r.get("clients_rejected"), **({"dp epsilon": r["dp_epsilon"]} if "dp_epsilon" in r else {})}
              for r in run.rounds]
    shown = ("base-model", "aggregation", "lora-aggregation", "personalisation", "partition", "replay",
             "secure-aggregation", "dp")
    settings = ", ".join(f"{k}={run.meta[k]}" for k in shown if k in run.meta)
    improved = sum(gain > 0 for gain in gains.values())
    return "\n".join([
        f"# Run {run.name}", "", settings, "",
        f"Held-out loss {format_cell(summary['heldout_start'])} -> {format_cell(summary['heldout_end'])}; "
        f"{improved} of {len(gains)} clients' personal models improved on their own held-out data.", "",
        "![loss per round](loss.png)", "", markdown_table(rounds) if rounds else "No round finished.", "",
        "Forgetting: base-domain loss of the model each client uses minus the base's own (lower is better).", "",
        "![per-client gain](gains.png)", "", "![traffic per round](bytes.png)", "",
    ])


def _plot_curve(axis, curve: list[tuple[int, float]], label: str) -> None:
    from matplotlib.ticker import MaxNLocator

    if curve:
        axis.plot([r for r, _ in curve], [v for _, v in curve], marker="o", label=label)
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))


def pyplot():
    """matplotlib's pyplot on the file-only backend (no display on servers and CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    figure.clear()
    import matplotlib.pyplot as plt

    plt.close(figure)


def format_cell(value: object) -> str:
    """A table cell: blank for missing, 4 decimals for floats, thousands separators for numbers."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.4f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)
