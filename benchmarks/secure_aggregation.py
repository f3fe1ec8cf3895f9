"""Secure aggregation cost on adapter-sized vectors: client and server seconds, bytes per client.

Runs the real protocol halves in one process (stamen.simulations.secure_sum) for
several client counts, with no dropouts and with 10% of clients dropping before
sending their masked input (the server then rebuilds their mask keys). The plain
reference is the example-weighted float64 sum of the same vectors, as FedAvg does.

    python benchmarks/secure_aggregation.py [--values 460800] [--clients 10,50,100]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from report import add_results_option, print_table, write_results

from stamen.server.secure_aggregation import SecAggSettings
from stamen.shared.secagg_protocol import update_vector
from stamen.simulations.secure_sum import secure_sum


def measure(num_clients: int, values: int, drop_fraction: float, rng: np.random.Generator) -> dict:
    deltas = {node: rng.normal(0, 1e-3, values) for node in range(1, num_clients + 1)}
    vectors = {node: update_vector(delta, 0.5, 1.0) for node, delta in deltas.items()}
    dropped = set(range(1, int(drop_fraction * num_clients) + 1))
    started = time.perf_counter()
    plain = sum(0.5 * deltas[node] for node in deltas if node not in dropped)
    plain_seconds = time.perf_counter() - started
    result = secure_sum(vectors, {"mask": dropped}, SecAggSettings())
    error = float(np.abs(result.total[:-1] - plain).max())
    survivors = sorted(result.server.masked)
    return {
        "clients": num_clients,
        "dropped": len(dropped),
        "neighbours": len(result.server.graph[survivors[0]]),
        "threshold": result.server.threshold,
        "client_s_mean": round(float(np.mean([result.client_seconds[n] for n in survivors])), 4),
        "server_s": round(result.server_seconds, 3),
        "plain_sum_s": round(plain_seconds, 3),
        "bytes_up_per_client": int(np.mean([result.bytes_up[n] for n in survivors])),
        "plain_fp16_bytes": 2 * values,
        "max_abs_error": f"{error:.1e}",
        "error_bound": f"{result.server.codec.sum_error_bound:.1e}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--values", type=int, default=460_800, help="adapter values (default: the demo's LoRA)")
    parser.add_argument("--clients", default="10,50,100")
    add_results_option(parser)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    rows = [measure(n, args.values, drop, rng) for n in map(int, args.clients.split(",")) for drop in (0.0, 0.1)]
    print_table(rows)
    write_results("secure_aggregation", rows, args.results, values=args.values)


if __name__ == "__main__":
    main()
