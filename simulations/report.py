"""What a person opens after a run: PNG plots and a Markdown report (several runs side by side: comparison.py).

Everything is read back from the run folder (``metrics.jsonl``, ``summary.json``,
``config.json``), so a report can be rebuilt for any finished or interrupted run.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from stamen.client.evaluation.forgetting import HISTORY
from stamen.client.state_store import ClientStateStore
from stamen.shared.atomic import atomic_write_text
from stamen.shared.metrics import (
    BACKWARD_TRANSFER,
    BASELINE_SECONDS,
    CURRENT_STAGE_HELDOUT_LOSS,
    EVAL_SECONDS,
    FORGETTING,
    GENERAL_TEXT_LOSS,
    HELDOUT_LOSS,
    PAST_STAGE_HELDOUT_LOSS,
    PERSONAL_HELDOUT_LOSS,
    PERSONAL_TRAIN_SECONDS,
    REPLAY_SECONDS,
    RETENTION,
    TRAIN_SECONDS,
    WISE_ALPHA,
    WISE_SECONDS,
)
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

    def curve(self, key: str = HELDOUT_LOSS.eval_mean, before: str = HELDOUT_LOSS.initial) -> list[tuple[int, float]]:
        """(round, mean of ``key``), with round 0 the clients' ``before`` value (their loss before any training)."""
        points = [(r["round"], r[key]) for r in self.rounds if key in r]
        if points and self.rounds and before in self.rounds[0]:
            points.insert(0, (0, self.rounds[0][before]))
        return points

    def client_gains(self) -> dict[str, float]:
        """Per client: held-out loss before training minus its personal model's after the last evaluated round."""
        before = {r["client"]: r[HELDOUT_LOSS.initial] for r in self.clients
                  if r.get("phase") == "train" and HELDOUT_LOSS.initial in r}
        after: dict[str, float] = {}
        for row in self.clients:
            if row.get("phase") == "evaluate" and row.get("accepted") and HELDOUT_LOSS.column in row:
                # rows are in round order: the last one wins
                after[row["client"]] = row.get(PERSONAL_HELDOUT_LOSS.column, row[HELDOUT_LOSS.column])
        return {client: before[client] - after[client] for client in sorted(before.keys() & after.keys())}

    def fact_retention(self) -> dict[str, float]:
        """Per known probe fact: the share of (client, evaluated round) in which the model the client used still
        answered it, read from each client's forgetting history (a simulated client's is in ``clients/``)."""
        answered: dict[str, list[bool]] = {}
        for folder in sorted(path for path in (self.folder / "clients").glob("*") if path.is_dir()):
            history = ClientStateStore(folder).load_document(HISTORY, before_round=sys.maxsize) or {"rounds": []}
            for row in history["rounds"]:
                for question, ok in row.get("answered", {}).items():
                    answered.setdefault(question, []).append(bool(ok))
        return {question: sum(outcomes) / len(outcomes) for question, outcomes in sorted(answered.items())}

    def gain_and_retention(self) -> dict[int, tuple[float, float]]:
        """Per evaluated round that measured retention: (personal gain over the clients' loss before training,
        retention)."""
        before = self.rounds[0].get(HELDOUT_LOSS.initial) if self.rounds else None
        key = self.personal_key()
        return {row["round"]: (before - row[key], row[RETENTION.eval_mean]) for row in self.rounds
                if before is not None and key in row and RETENTION.eval_mean in row}

    def mean_of(self, key: str) -> float | None:
        """``key`` averaged over the evaluated rounds: steadier than the last round's alone."""
        values = [r[key] for r in self.rounds if key in r]
        return sum(values) / len(values) if values else None

    def client_seconds(self) -> float | None:
        """Mean seconds a client spent on a round: training (a personal model's too: Ditto's beside the global
        round, a finetune's at evaluation) plus keeping and building its replay, plus choosing the model it uses
        (``wise-seconds``: alpha's held-out passes and guard checks) where it interpolates."""
        spent = [_training_seconds(r) for r in self.clients if r.get("phase") == "train" and r.get("accepted")]
        evaluated = [r for r in self.clients if r.get("phase") == "evaluate" and WISE_ALPHA.column in r]
        if not spent or any(WISE_SECONDS.column not in r for r in evaluated):
            return None  # no training, or a choice whose cost was not recorded: no number rather than a low one
        after = [r.get(WISE_SECONDS.column, 0.0) + r.get(PERSONAL_TRAIN_SECONDS.column, 0.0) for r in self.clients
                 if r.get("phase") == "evaluate" and (WISE_ALPHA.column in r or PERSONAL_TRAIN_SECONDS.column in r)]
        return sum(spent) / len(spent) + (sum(after) / len(after) if after else 0.0)

    def compute_split(self) -> tuple[float, float]:
        """All clients' seconds training (with replay) and evaluating (waiting for a probe another client
        measures included, and the round-0 baseline round 1's training replies measure): what an evaluation
        schedule (``evaluate-every``) trades against."""
        training = sum(_training_seconds(r) for r in self.clients if r.get("phase") == "train")
        evaluating = sum(r.get(EVAL_SECONDS.column, 0.0) if r.get("phase") == "evaluate"
                         else r.get(BASELINE_SECONDS.column, 0.0) for r in self.clients)
        return training, evaluating

    def personal_key(self) -> str:
        """The loss of the model each client uses: its personal model's where the run has one."""
        return PERSONAL_HELDOUT_LOSS.eval_mean if any(PERSONAL_HELDOUT_LOSS.eval_mean in r for r in self.rounds) \
            else HELDOUT_LOSS.eval_mean

    def cumulative_cost(self) -> list[tuple[int, float, float]]:
        """(round, bytes moved up and down by all clients, all clients' training seconds), summed from the
        start of the run to the end of each round."""
        costs, moved, spent = [], 0.0, 0.0
        for row in self.rounds:
            moved += row.get("bytes_in", 0) + row.get("bytes_out", 0)
            spent += sum(_training_seconds(r) for r in self.clients
                         if r.get("phase") == "train" and r.get("round") == row["round"])
            costs.append((row["round"], moved, spent))
        return costs

    def cost_to_target(self, target: float) -> dict:
        """Rounds, bytes and client seconds until the loss of the model each client uses first reached
        ``target``."""
        key = self.personal_key()
        for row, (server_round, moved, spent) in zip(self.rounds, self.cumulative_cost(), strict=True):
            if row.get(key) is not None and row[key] <= target:
                return {"reached_target": 1, "rounds_to_target": server_round, "bytes_to_target": moved,
                        "client_seconds_to_target": spent}
        return {"reached_target": 0, "rounds_to_target": None, "bytes_to_target": None,
                "client_seconds_to_target": None}

    def summary_row(self, target: float | None = None) -> dict:
        """The numbers a comparison table shows for this run (with ``target``: its cost to reach it)."""
        curve, last = self.curve(), self.rounds[-1] if self.rounds else {}
        gains = list(self.client_gains().values())
        return {
            "run": self.name,
            "rounds": len(self.rounds),
            "heldout_start": curve[0][1] if curve else None,
            "heldout_end": curve[-1][1] if curve else None,
            "personal_end": last.get(PERSONAL_HELDOUT_LOSS.eval_mean),
            "general_text_end": last.get(GENERAL_TEXT_LOSS.eval_mean),
            "retention_end": last.get(RETENTION.eval_mean),
            "retention_mean": self.mean_of(RETENTION.eval_mean),
            "mean_client_gain": sum(gains) / len(gains) if gains else None,
            "forgetting_end": last.get(FORGETTING.eval_mean),
            "forgetting_mean": self.mean_of(FORGETTING.eval_mean),
            **({"backward_transfer_end": last[BACKWARD_TRANSFER.eval_mean]}
               if BACKWARD_TRANSFER.eval_mean in last else {}),
            **{f"{stage}_stage_end": last[metric.eval_mean]
               for stage, metric in (("current", CURRENT_STAGE_HELDOUT_LOSS), ("past", PAST_STAGE_HELDOUT_LOSS))
               if metric.eval_mean in last},
            "client_seconds": self.client_seconds(),
            "evaluation_share": _share(*self.compute_split()),
            "bytes_up_per_client": last.get("bytes_up_per_client"),
            "seconds": self.seconds,
            **(self.cost_to_target(target) if target is not None else {}),
        }


def write_report(folder: Path) -> Path:
    """``loss.png``, ``gains.png``, ``bytes.png`` and ``report.md`` embedding them; returns the report."""
    run = RunRecord.read(folder)
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(6, 4))
    _plot_curve(axis, run.curve(), "global model, held-out (clients' own data)")
    _plot_curve(axis, run.curve(PERSONAL_HELDOUT_LOSS.eval_mean), "personal model, held-out")
    _plot_curve(axis, run.curve(GENERAL_TEXT_LOSS.eval_mean, GENERAL_TEXT_LOSS.initial),
                "general text (forgetting probe)")
    axis.set(xlabel="round", ylabel="loss", title=f"{run.name}: loss per round")
    if axis.lines:  # a run without evaluation has no curves
        axis.legend()
    save_figure(figure, folder / "loss.png")

    gains = run.client_gains()
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.hist(list(gains.values()) or [0.0], bins=min(20, max(5, len(gains))))
    axis.axvline(0.0, color="black", linewidth=0.8)
    axis.set(xlabel="held-out loss before - after (higher is better)", ylabel="clients",
             title="per-client personalisation gain")
    save_figure(figure, folder / "gains.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    rounds = [r["round"] for r in run.rounds]
    axis.bar([r - 0.2 for r in rounds], [r.get("bytes_in", 0) for r in run.rounds], width=0.4, label="up (all clients)")
    axis.bar(
        [r + 0.2 for r in rounds], [r.get("bytes_out", 0) for r in run.rounds], width=0.4, label="down (all clients)"
    )
    axis.set(xlabel="round", ylabel="bytes", title="traffic per round")
    axis.legend()
    save_figure(figure, folder / "bytes.png")

    atomic_write_text(folder / "report.md", _report_markdown(run, gains))
    return folder / "report.md"


def markdown_table(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(format_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _report_markdown(run: RunRecord, gains: dict[str, float]) -> str:
    summary = run.summary_row()
    rounds = [{"round": r["round"], "clients": r.get("clients_accepted"),
               "held-out loss": r.get(HELDOUT_LOSS.eval_mean),
               "personal held-out loss": r.get(PERSONAL_HELDOUT_LOSS.eval_mean),
               "general-text loss": r.get(GENERAL_TEXT_LOSS.eval_mean), "forgetting": r.get(FORGETTING.eval_mean),
               "retention": r.get(RETENTION.eval_mean),
               "bytes up/client": r.get("bytes_up_per_client"),
               "dropped": r.get("clients_dropped"), "rejected": r.get("clients_rejected"),
               **({"dp epsilon": r["dp_epsilon"]} if "dp_epsilon" in r else {})}
              for r in run.rounds]
    shown = ("base-model", "aggregation", "lora-aggregation", "personalisation", "partition", "replay",
             "secure-aggregation", "dp")
    settings = ", ".join(f"{k}={run.meta[k]}" for k in shown if k in run.meta)
    improved = sum(gain > 0 for gain in gains.values())
    training, evaluating = run.compute_split()
    return "\n".join([
        f"# Run {run.name}", "", settings, "",
        f"Held-out loss {format_cell(summary['heldout_start'])} -> {format_cell(summary['heldout_end'])}; "
        f"{improved} of {len(gains)} clients' personal models improved on their own held-out data.", "",
        f"Client compute: {training:,.1f} s training, {evaluating:,.1f} s evaluating (all clients, the round-0 "
        f"baseline included; {_share(training, evaluating) or 0:.0%} evaluating; `evaluate-every` evaluates less "
        "often).", "",
        "![loss per round](loss.png)", "", markdown_table(rounds) if rounds else "No round finished.", "",
        "Forgetting: general-text loss (human prose no client or replay source touches) of the model each client "
        "uses minus the base's own (lower is better); retention: share of the probe questions the base answered "
        "that the model each client uses still answers.", "",
        "![per-client gain](gains.png)", "", "![traffic per round](bytes.png)", "",
    ])


def _training_seconds(row: dict) -> float:
    """A training reply's client seconds: the local steps, a personal model's (Ditto), and keeping and building its
    replay."""
    return sum(row.get(metric.column, 0.0) for metric in (TRAIN_SECONDS, PERSONAL_TRAIN_SECONDS, REPLAY_SECONDS))


def _share(training: float, evaluating: float) -> float | None:
    return evaluating / (training + evaluating) if training + evaluating > 0 else None


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


def save_figure(figure, path: Path) -> None:
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
