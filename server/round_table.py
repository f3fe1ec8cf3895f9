"""The per-round table a finished run prints, simulated or deployed."""

from __future__ import annotations

from rich.table import Table


def summary_table(rounds: list[dict], base_bytes: int) -> Table:
    """The per-round table printed at the end of a run; round 0 is the initial global adapter."""
    table = Table(title="Federation rounds (global adapter)")
    private = any("dp_epsilon" in row for row in rounds)
    for column in ("round", "held-out loss", "general-text loss", "clients", "bytes up/client", "bytes down/client",
                   "up % of base", *(["ε (DP)"] if private else [])):
        table.add_column(column, justify="right")
    if rounds and "initial_heldout_loss" in rounds[0]:
        first = rounds[0]
        table.add_row(
            "0",
            f"{first['initial_heldout_loss']:.4f}",
            f"{first.get('initial_general_text_loss', float('nan')):.4f}",
            *[""] * (5 if private else 4),
        )
    for row in rounds:
        up = row.get("bytes_up_per_client", 0)
        table.add_row(
            str(row["round"]),
            f"{row.get('eval_heldout_loss', float('nan')):.4f}",
            f"{row.get('eval_general_text_loss', float('nan')):.4f}",
            str(row.get("clients_accepted", 0)),
            f"{up:,}",
            f"{row.get('bytes_down_per_client', 0):,}",
            f"{100 * up / base_bytes:.3f}%" if base_bytes else "n/a",
            *([f"{row['dp_epsilon']:.2f}" if "dp_epsilon" in row else ""] if private else []),
        )
    return table
