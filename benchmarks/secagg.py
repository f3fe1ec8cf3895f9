"""Round time and upload per client with and without secure aggregation, Stamen vs Flower's SecAgg+.

Every cell is a real Flower simulation (Ray backend, one virtual SuperNode per client)
whose clients skip training and return a fixed random update of ``params`` values, so
what is timed is the round itself: messages, masking, unmasking and aggregation.

- Stamen: its own server round (``stamen.server.federation.train_round``: plain fp32
  upload, or the secure round) and its ClientApp's mods around a synthetic train handler,
  with the same neighbourhood degree and threshold as a run. The secure round runs twice:
  with keys taken on the server's word (four exchanges), and under a roster (``--roster``
  cells: every client's keys signed by its P-384 node key and checked by its neighbours, and
  the consistency round, a fifth exchange, in which each survivor signs the survivor set).
- Flower: the legacy ``DefaultWorkflow`` with and without ``SecAggPlusWorkflow`` +
  ``secaggplus_mod`` (NumPyClient), with the same number of shares and threshold.

Round 1 includes starting the Ray actors and importing the client code, so a cell's time
is the median of the later rounds.

    python benchmarks/secagg.py [--clients 10 50 100] [--params 100000 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from report import print_table, write_results

from stamen.client.handlers import client_app_with
from stamen.client.secagg_checks import IDENTITY_KEY
from stamen.client.secure_aggregation_mod import SUMMED_DTYPE
from stamen.server.federated_round import FederatedRound
from stamen.server.fold import RoundFold
from stamen.server.round_ledger import RoundLedger
from stamen.server.rules import make_rule
from stamen.server.run_record import RunRecorder
from stamen.server.secure_aggregation import neighbourhoods
from stamen.server.strategy import AdapterStrategy
from stamen.shared.config import RunConfig
from stamen.shared.dev_certs import DevCertificates, add_node_key
from stamen.shared.protocol import ARRAYS, NUM_EXAMPLES, client_reply, read_instruction, round_config
from stamen.shared.run_folder import RunFolder
from stamen.shared.secagg_identity import roster_of
from stamen.shared.wire import AdapterSchema, encode_adapter
from stamen.simulations.engine import run_apps

FINGERPRINT = "0" * 64  # no base model: the clients' updates are synthetic
UPDATE_SCALE = 0.01  # adapter deltas are small; both protocols clip well above this


def synthetic_update(msg: Message, context: Context) -> Message:
    """Stamen's train handler minus the training: a seeded random delta of the global adapter's shapes."""
    instruction = read_instruction(msg.content)
    received = {name: array.numpy() for name, array in msg.content[ARRAYS].items()}
    rng = np.random.default_rng(context.node_id)
    delta = {name: rng.uniform(-UPDATE_SCALE, UPDATE_SCALE, value.shape).astype(np.float32)
             for name, value in received.items()}
    config = instruction.config
    wire = SUMMED_DTYPE if config.privacy.secure_aggregation else config.wire_dtype  # as the train handler does
    reply = client_reply({NUM_EXAMPLES: 1}, FINGERPRINT, f"node-{context.node_id}", encode_adapter(delta, wire))
    return Message(reply, reply_to=msg)


def stamen_cell(clients: int, params: int, secure: bool, rounds: int, folder: Path, roster: bool = False
                ) -> tuple[list[float], int]:
    """Seconds of each round and bytes one client uploads per round (under a roster of the clients' keys)."""
    keys = DevCertificates(folder / f"keys-{clients}")
    if roster:
        for partition in range(clients):
            if not keys.node_key(str(partition)).is_file():
                add_node_key(keys, str(partition))
    config = RunConfig().replace(**{
        "secure-aggregation": secure, "wire-dtype": "float32", "num-server-rounds": rounds, "min-clients": clients,
        "fraction-evaluate": 0.0, "run-dir": str(folder), "run-id": f"stamen-{clients}-{params}-{secure}-{roster}",
        "secagg-roster": ",".join(roster_of(keys.node_public_keys())) if roster else "",
    })
    times: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = {"update": np.zeros(params, dtype=np.float32)}
        schema = AdapterSchema.from_state(initial, config.wire_dtype)
        ledger = RoundLedger(RunRecorder(folder / config.run_id, config, {}))
        rule = make_rule("fedavg")
        fold = RoundFold(initial, schema, rule, (), config.privacy)
        strategy = AdapterStrategy(rule, (), config.wire_dtype, fraction_train=1.0, fraction_evaluate=0.0,
                                   min_train_nodes=clients, min_available_nodes=clients)
        rule.initialise(fold.global_adapter)
        federated_round = FederatedRound(strategy, fold, ledger, FINGERPRINT, config, round_config(config, FINGERPRINT))
        for server_round in range(1, rounds + 1):
            started = time.perf_counter()
            federated_round.train(grid, server_round)
            times.append(time.perf_counter() - started)
            if rule.count != clients:
                raise RuntimeError(f"round {server_round} aggregated {rule.count} of {clients} clients")

    def identity(msg: Message, context: Context, call_next):
        """A virtual node's node key, as `stamen client join` names it in a device's node config."""
        context.node_config[IDENTITY_KEY] = str(keys.node_key(str(context.node_config["partition-id"])))
        return call_next(msg, context)

    run_apps(server_app, client_app_with([identity] if roster else [], train_handler=synthetic_update), clients)
    rows = RunFolder(folder / config.run_id).rows()
    uploads = [row["bytes_up"] for row in rows if row.get("accepted") and "bytes_up" in row]
    return times, int(statistics.median(uploads))


def flower_cell(clients: int, params: int, secure: bool, rounds: int) -> list[float]:
    """Seconds of each fit round through Flower's legacy workflows."""
    from flwr.client import NumPyClient
    from flwr.client.mod import secaggplus_mod
    from flwr.common import ndarrays_to_parameters
    from flwr.server import LegacyContext, ServerConfig
    from flwr.server.strategy import FedAvg
    from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow

    class FixedUpdate(NumPyClient):
        def __init__(self, seed: int) -> None:
            self.update = np.random.default_rng(seed).uniform(-UPDATE_SCALE, UPDATE_SCALE, params).astype(np.float32)

        def fit(self, parameters, config):
            return [self.update], 1, {}

    starts: list[float] = []
    times: list[float] = []

    class TimedFedAvg(FedAvg):
        """Round time = configure_fit to the end of aggregate_fit (SecAgg+ unmasks in between)."""

        def configure_fit(self, server_round, parameters, client_manager):
            starts.append(time.perf_counter())
            return super().configure_fit(server_round, parameters, client_manager)

        def aggregate_fit(self, server_round, results, failures):
            if len(results) != clients:
                raise RuntimeError(f"round {server_round} aggregated {len(results)} of {clients} clients")
            aggregated = super().aggregate_fit(server_round, results, failures)
            times.append(time.perf_counter() - starts[-1])
            return aggregated

    holders = min(len(peers) for peers in neighbourhoods(list(range(clients)), 0, random.Random(0)).values()) + 1
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy = TimedFedAvg(
            fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=clients, min_available_clients=clients,
            initial_parameters=ndarrays_to_parameters([np.zeros(params, dtype=np.float32)]),
        )
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        # Stamen's default: a secret needs more than half of its holders
        fit = SecAggPlusWorkflow(num_shares=holders, reconstruction_threshold=math.floor(holders / 2) + 1,
                                 max_weight=1.0) if secure else None
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    client_app = ClientApp(client_fn=lambda context: FixedUpdate(context.node_id).to_client(),
                           mods=[secaggplus_mod] if secure else [])
    run_apps(server_app, client_app, clients)
    return times


def steady(times: list[float]) -> float:
    """The median round time after the first (warm-up) round."""
    return round(statistics.median(times[1:] or times), 3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's legacy workflows")
    parser.add_argument("--name", default="secagg", help="results/<name>.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for params in args.params:
            for clients in args.clients:
                plain, plain_bytes = stamen_cell(clients, params, False, args.rounds, Path(scratch))
                secure, secure_bytes = stamen_cell(clients, params, True, args.rounds, Path(scratch))
                signed, signed_bytes = stamen_cell(clients, params, True, args.rounds, Path(scratch), roster=True)
                row = {
                    "clients": clients,
                    "params": params,
                    "plain_s": steady(plain),
                    "secure_s": steady(secure),
                    "roster_s": steady(signed),
                    "flower_plain_s": None
                    if args.no_flower
                    else steady(flower_cell(clients, params, False, args.rounds)),
                    "flower_secaggplus_s": None
                    if args.no_flower
                    else steady(flower_cell(clients, params, True, args.rounds)),
                    "plain_upload_bytes": plain_bytes,
                    "secure_upload_bytes": secure_bytes,
                    "roster_upload_bytes": signed_bytes,
                }
                row["secure_x_plain"] = round(row["secure_s"] / row["plain_s"], 2)
                row["roster_x_plain"] = round(row["roster_s"] / row["plain_s"], 2)
                if row["flower_secaggplus_s"] is not None:
                    flower_overhead = row["flower_secaggplus_s"] - row["flower_plain_s"]
                    row["overhead_ratio"] = round(flower_overhead / max(row["secure_s"] - row["plain_s"], 1e-3), 1)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print_table(rows)
    write_results(args.name, rows, rounds=args.rounds)


if __name__ == "__main__":
    main()
