"""Server aggregation time per rule against the bandwidth limit (a numpy copy of the same bytes).

Updates are generated one at a time and folded in as the strategy folds them, so a
streaming rule never holds more than its running sum; rules that must see every update
at once (median, Krum, ...) are measured only where all updates fit in --max-gib.

    python benchmarks/server_aggregation.py [--clients 10,100,1000] [--values 1000000,10000000]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from report import add_results_option, print_table, write_results

from stamen.server.rules import ClientUpdate, make_rule

RULES = ("fedavg", "fedadam", "median", "krum")


def measure(rule_name: str, clients: int, values: int, pool: np.ndarray) -> dict:
    rule = make_rule(rule_name)
    global_adapter = {"w": np.zeros(values, np.float32)}
    rule.initialise(global_adapter)
    rule.start_round(1, clients)
    copy_seconds, fold_seconds = 0.0, 0.0
    for i in range(clients):
        update = pool[i % len(pool)]  # distinct arrays, no generation cost inside the timing
        started = time.perf_counter()
        copied = update.copy()  # the bandwidth limit: touching the update's bytes once
        copy_seconds += time.perf_counter() - started
        started = time.perf_counter()
        rule.add(ClientUpdate(f"c{i}", {"w": copied}, 1.0 + i % 7))
        fold_seconds += time.perf_counter() - started
    started = time.perf_counter()
    rule.finish_round(global_adapter)
    fold_seconds += time.perf_counter() - started
    return {"rule": rule_name, "clients": clients, "values": values, "seconds": round(fold_seconds, 3),
            "memcpy_seconds": round(copy_seconds, 3), "x_memcpy": round(fold_seconds / copy_seconds, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="10,100,1000")
    parser.add_argument("--values", default="1000000,10000000")
    parser.add_argument("--max-gib", type=float, default=4.0, help="memory budget for rules that hold every update")
    add_results_option(parser)
    args = parser.parse_args()
    rows = []
    for values in map(int, args.values.split(",")):
        pool = np.random.default_rng(0).normal(0, 1e-3, (4, values)).astype(np.float32)
        for clients in map(int, args.clients.split(",")):
            for rule in RULES:
                held = make_rule(rule).needs_individual_updates
                if held and clients * values * 8 > args.max_gib * 2**30:
                    rows.append({"rule": rule, "clients": clients, "values": values, "seconds": "n/a",
                                 "memcpy_seconds": "", "x_memcpy": f"holds {clients * values * 8 / 2**30:.0f} GiB"})
                    continue
                rows.append(measure(rule, clients, values, pool))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print_table(rows)
    print(f"peak RSS {peak:.2f} GiB")
    write_results("server_aggregation", rows, args.results, peak_rss_gib=round(peak, 2), max_gib=args.max_gib)


if __name__ == "__main__":
    main()
