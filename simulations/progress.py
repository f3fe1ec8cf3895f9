"""A live view of a running federation, read from the run's ``metrics.jsonl``.

Reading the file (not hooking the engine) means the same view works for any
engine, and what a person sees is exactly what was recorded.
"""

from __future__ import annotations

import json
import threading
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from stamen.shared.metrics import GENERAL_TEXT_LOSS, HELDOUT_LOSS, RETENTION, TRAIN_LOSS
from stamen.shared.run_folder import RunFolder


def round_line(row: dict, num_rounds: int, previous_loss: float | None) -> str:
    """One human line per finished round; ``previous_loss`` is the held-out loss the round started from."""
    after = row.get(HELDOUT_LOSS.eval_mean)
    parts = [f"round {row['round']}/{num_rounds}"]
    if previous_loss is not None and after is not None:
        parts.append(f"held-out loss {previous_loss:.4f} -> {after:.4f}")
    if GENERAL_TEXT_LOSS.eval_mean in row:
        parts.append(f"general-text loss {row[GENERAL_TEXT_LOSS.eval_mean]:.4f}")
    if RETENTION.eval_mean in row:
        parts.append(f"retention {row[RETENTION.eval_mean]:.0%}")
    parts.append(f"{row.get('clients_accepted', 0)} clients")
    parts.append(f"{row.get('bytes_up_per_client', 0) / 1e6:.3f} MB up/client")
    if "dp_epsilon" in row:
        parts.append(f"ε {row['dp_epsilon']:.2f} at δ {row['dp_delta']:g}")
    return " | ".join(parts)


class RunMonitor:
    """Tails ``metrics.jsonl`` in a thread and drives a rich progress bar."""

    def __init__(self, folder: RunFolder, num_rounds: int, sampled: int, console: Console) -> None:
        """``sampled``: clients asked per round (train and evaluate), shown as the results to expect."""
        self.path = folder.metrics
        self.num_rounds = num_rounds
        self.sampled = sampled
        self.bytes_moved = 0
        self._losses: list[float] = []
        self.console = console
        self.rounds: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
        )
        self._task = self.progress.add_task("rounds", total=num_rounds, status="starting clients")

    def __enter__(self) -> RunMonitor:
        self.progress.start()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.progress.stop()

    def _follow(self) -> None:
        offset = 0
        results = 0
        while True:
            stopping = self._stop.is_set()
            if self.path.is_file():
                with self.path.open(encoding="utf-8") as handle:
                    handle.seek(offset)
                    for line in iter(handle.readline, ""):
                        if not line.endswith("\n"):
                            break
                        offset += len(line.encode("utf-8"))
                        results = self._show(json.loads(line), results)
            if stopping:
                return
            time.sleep(0.5)

    def _show(self, row: dict, results: int) -> int:
        self.bytes_moved += row.get("bytes_up", 0) + row.get("bytes_down", 0)
        traffic = f"{self.bytes_moved / 1e6:.1f} MB moved"
        if row.get("kind") == "round":
            previous = self.rounds[-1].get(HELDOUT_LOSS.eval_mean) if self.rounds else row.get(HELDOUT_LOSS.initial)
            self.rounds.append(row)
            self.console.print(round_line(row, self.num_rounds, previous))
            loss = row.get(HELDOUT_LOSS.eval_mean, float("nan"))
            self.progress.update(self._task, advance=1, status=f"held-out loss {loss:.4f} | {traffic}")
            self._losses = []
            return 0
        results += 1
        loss = row.get(TRAIN_LOSS.column, row.get(HELDOUT_LOSS.column))
        if loss is not None:
            self._losses.append(loss)
        mean = f", mean loss {sum(self._losses) / len(self._losses):.4f}" if self._losses else ""
        self.progress.update(self._task, status=f"round {row['round']}: {results} of {self.sampled} client results "
                                                f"({row['phase']}{mean}) | {traffic}")
        return results
