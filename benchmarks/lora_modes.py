"""LoRA aggregation modes side by side on the same clients, rounds and seed.

Runs `stamen simulate` once per mode (skipping modes whose run already finished),
then prints one table and writes results/lora_modes.json.

    python benchmarks/lora_modes.py --clients 4 --rounds 3 [--runs runs/lora-modes]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from report import add_results_option, add_settings_option, print_table, write_results

from stamen.shared.metrics import GENERAL_TEXT_LOSS, HELDOUT_LOSS
from stamen.shared.run_folder import RunFolder
from stamen.simulations.sweep import simulate_in_subprocess

MODES = ("naive", "ffa", "fedsa", "exact")


def run_mode(mode: str, runs: Path, clients: int, rounds: int, extra: dict[str, str]) -> None:
    """Run one mode unless its run already finished."""
    if RunFolder(runs / mode).finished():
        return
    runs.mkdir(parents=True, exist_ok=True)
    failure = simulate_in_subprocess({**extra, "lora-aggregation": mode}, clients, rounds, runs, mode)
    if failure:
        raise SystemExit(failure)


def summarise(run: Path, mode: str) -> dict:
    summary = RunFolder(run).summary_record()
    rounds = summary["rounds"]
    first, last = rounds[0], rounds[-1]
    if not all(row.get("clients_accepted") for row in rounds):
        raise SystemExit(f"{mode}: a round aggregated no client; see {run}.log and {run}/metrics.jsonl")
    return {
        "mode": mode,
        "rounds": len(rounds),
        "heldout_loss_round0": round(first[HELDOUT_LOSS.initial], 4),
        "heldout_loss_final": round(last[HELDOUT_LOSS.eval_mean], 4),
        "general_text_loss_round0": round(first[GENERAL_TEXT_LOSS.initial], 4),
        "general_text_loss_final": round(last[GENERAL_TEXT_LOSS.eval_mean], 4),
        "bytes_up_per_client": last["bytes_up_per_client"],
        "bytes_down_per_client": last["bytes_down_per_client"],
        "server_seconds": summary.get("seconds"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=Path("runs/lora-modes"))
    add_settings_option(parser, "another setting of every run")
    parser.add_argument("--modes", default=",".join(MODES), help=f"some of {','.join(MODES)}")
    add_results_option(parser)
    args = parser.parse_args()
    extra = dict(pair.split("=", 1) for pair in args.extra)
    modes = args.modes.split(",")
    for mode in modes:
        run_mode(mode, args.runs, args.clients, args.rounds, extra)
    rows = [summarise(args.runs / mode, mode) for mode in modes]
    print_table(rows)
    write_results("lora_modes", rows, args.results, clients=args.clients, rounds=args.rounds)


if __name__ == "__main__":
    main()
