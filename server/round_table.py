"""The per-round table a finished run prints, simulated or deployed."""

from __future__ import annotations

from rich.table import Table

from stamen.shared.metrics import GENERAL_TEXT_LOSS, HELDOUT_LOSS


def summary_table(rounds: list[dict], base_bytes: int) -> Table:
    """The per-round table printed at the end of a run; round 0 is the initial global adapter. A round that did not
    measure a loss (evaluation or probes skipped on it) shows a dash, not ``nan``."""
    table = Table(title="Federation rounds (global adapter)")
    private = any("dp_epsilon" in row for row in rounds)
    for column in ("round", "held-out loss", "general-text loss", "clients", "bytes up/client", "bytes down/client",
                   "up % of base", *(["ε (DP)"] if private else [])):
        table.add_column(column, justify="right")
    if rounds and HELDOUT_LOSS.initial in rounds[0]:
        first = rounds[0]
        table.add_row(
            "0",
            _loss(first, HELDOUT_LOSS.initial),
            _loss(first, GENERAL_TEXT_LOSS.initial),
            *[""] * (5 if private else 4),
        )
    for row in rounds:
        up = row.get("bytes_up_per_client", 0)
        table.add_row(
            str(row["round"]),
            _loss(row, HELDOUT_LOSS.eval_mean),
            _loss(row, GENERAL_TEXT_LOSS.eval_mean),
            str(row.get("clients_accepted", 0)),
            f"{up:,}",
            f"{row.get('bytes_down_per_client', 0):,}",
            f"{100 * up / base_bytes:.3f}%" if base_bytes else "n/a",
            *([f"{row['dp_epsilon']:.2f}" if "dp_epsilon" in row else ""] if private else []),
        )
    return table


def _loss(row: dict, key: str) -> str:
    return f"{row[key]:.4f}" if key in row else "-"
