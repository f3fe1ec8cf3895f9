"""Wall time of a round and peak memory of a whole simulation, by number of virtual clients.

Each cell is a real Stamen simulation (Ray, 2 rounds, one local step per client, no
evaluation) started in its own process, so its peak memory (driver + Ray workers,
sampled every 0.2 s) is its own. The round time is round 2's (round 1 also starts the
Ray workers and loads the base).

- ``shared``: Stamen's ClientApp: each worker process loads the base once and its
  virtual clients re-use it.
- ``per-call``: the same ClientApp, but the base is loaded afresh in every client call,
  as a client function that builds its model on each call does (Flower's simulation
  examples load the model inside ``client_fn`` / the train handler).

    python benchmarks/simulation_scale.py [--tiny 10 50 200] [--embedded 10 20 50]
                                          [--per-call-tiny 10 50] [--per-call-embedded 10]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from flwr.app import Context, Message
from report import add_results_option, measure_in_child, print_table, write_results

from stamen.client.loaded_base import release_runtime
from stamen.shared.config import RunConfig
from stamen.shared.run_folder import RunFolder
from stamen.shared.tiny_model import build_tiny_base
from stamen.simulations.client_app import SIMULATED_CLIENT, simulated_client_app
from stamen.simulations.engine import simulate
from stamen.simulations.process_memory import PeakTreeMemory

EMBEDDED = "smollm2-135m"


def train_loading_the_base(msg: Message, context: Context) -> Message:
    """Stamen's train handler after dropping the process's loaded base (the per-call baseline)."""
    release_runtime()
    return SIMULATED_CLIENT.train(msg, context)


def run_cell(base: str, clients: int, loader: str, folder: Path) -> dict:
    """One simulation; its round-2 seconds and the peak memory of the process tree."""
    config = RunConfig().replace(**{
        "base-model": base, "quantisation": "none", "num-server-rounds": 2, "local-steps": 1, "batch-size": 2,
        "max-seq-len": 48, "partition": "iid", "fraction-evaluate": 0.0, "min-clients": clients,
        "run-dir": str(folder), "run-id": f"{loader}-{clients}",
    })
    client_app = simulated_client_app([], train_loading_the_base) if loader == "per-call" else None
    with PeakTreeMemory() as peak:
        run_dir = simulate(config, clients, client_app=client_app)
    rounds = RunFolder(run_dir).rows()
    times = [row["time"] for row in rounds if row.get("kind") == "round"]
    trained = sum(1 for row in rounds if row.get("kind") == "client" and row["round"] == 2 and row.get("accepted"))
    return {"round_s": round(times[1] - times[0], 2), "trained": trained, "peak_mb": round(peak.bytes / 2**20)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", type=int, nargs="*", default=[10, 50, 200])
    parser.add_argument("--embedded", type=int, nargs="*", default=[10, 20, 50])
    parser.add_argument("--per-call-tiny", type=int, nargs="*", default=[10, 50])
    parser.add_argument("--per-call-embedded", type=int, nargs="*", default=[10])
    parser.add_argument("--one-cell", nargs=3, metavar=("BASE", "CLIENTS", "LOADER"), help=argparse.SUPPRESS)
    add_results_option(parser)
    args = parser.parse_args()
    if args.one_cell:
        base, clients, loader = args.one_cell
        with tempfile.TemporaryDirectory() as folder:
            print(json.dumps(run_cell(base, int(clients), loader, Path(folder))))
        return
    with tempfile.TemporaryDirectory() as folder:
        tiny = build_tiny_base(Path(folder) / "tiny", hidden_size=512, num_layers=4)  # ~37 MB: copies would show
        cells = [("tiny", tiny, n, "shared") for n in args.tiny]
        cells += [("tiny", tiny, n, "per-call") for n in args.per_call_tiny]
        cells += [("embedded 135M", EMBEDDED, n, "shared") for n in args.embedded]
        cells += [("embedded 135M", EMBEDDED, n, "per-call") for n in args.per_call_embedded]
        rows = []
        for label, base, clients, loader in cells:
            measured = measure_in_child([__file__, "--one-cell", str(base), str(clients), loader])
            rows.append({"base": label, "clients": clients, "loader": loader, **measured})
            print(f"measured {label} x {clients} ({loader}): {rows[-1]}", file=sys.stderr)
    print_table(rows)
    write_results("simulation_scale", rows, args.results, rounds=2, local_steps=1, batch_size=2, max_seq_len=48)


if __name__ == "__main__":
    main()
