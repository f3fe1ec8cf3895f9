"""Round time and upload per client with and without secure aggregation, Stamen vs Flower's SecAgg+.

Every cell is a real Flower simulation (Ray backend, one virtual SuperNode per client)
whose clients skip training and return a fixed random update of ``params`` values, and skip
evaluation and return a fixed held-out loss, so what is timed is the round itself: messages,
masking, unmasking and aggregation, for each phase (train, evaluate).

- Stamen: its own server round (``stamen.server.federated_round.FederatedRound``: plain
  fp32 upload, or the secure round) and its ClientApp's mods around synthetic train and
  evaluate handlers, with the same neighbourhood degree and threshold as a run. The secure
  round runs twice: with keys taken on the server's word (four exchanges per phase), and
  under a roster (``roster_*`` columns: every client's keys signed by its P-384 node key and
  checked by its neighbours, and the consistency round, a fifth exchange, in which each
  survivor signs the survivor set).
- Flower: the legacy ``DefaultWorkflow`` with and without ``SecAggPlusWorkflow`` +
  ``secaggplus_mod`` (NumPyClient), with the same number of shares and threshold. SecAgg+
  secures ``fit`` only: Flower's evaluation is in the clear in both cells.

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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from flwr.app import Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.server import LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp
from report import add_results_option, print_table, write_results

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
from stamen.shared.metrics import HELDOUT_LOSS
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


def synthetic_evaluation(msg: Message, context: Context) -> Message:
    """Stamen's evaluate handler minus the forward passes: a held-out loss seeded by the client's partition (node
    ids differ from one simulation to the next), so every cell averages the same losses."""
    loss = float(np.random.default_rng(int(context.node_config["partition-id"])).uniform(1.0, 3.0))
    reply = client_reply({NUM_EXAMPLES: 1, HELDOUT_LOSS.name: loss}, FINGERPRINT, f"node-{context.node_id}")
    return Message(reply, reply_to=msg)


@dataclass
class Cell:
    """One Stamen cell: seconds of each round's phases, a client's upload per training, the evaluated mean."""

    train_s: list[float]
    evaluate_s: list[float]
    upload_bytes: int
    heldout_loss: float


def stamen_cell(clients: int, params: int, secure: bool, rounds: int, folder: Path, roster: bool = False) -> Cell:
    """Every round trains and evaluates every client (secure: under a roster of the clients' keys)."""
    keys = DevCertificates(folder / f"keys-{clients}")
    if roster:
        for partition in range(clients):
            if not keys.node_key(str(partition)).is_file():
                add_node_key(keys, str(partition))
    config = RunConfig().replace(**{
        "secure-aggregation": secure, "wire-dtype": "float32", "num-server-rounds": rounds, "min-clients": clients,
        "fraction-evaluate": 1.0, "run-dir": str(folder), "run-id": f"stamen-{clients}-{params}-{secure}-{roster}",
        "secagg-roster": ",".join(roster_of(keys.node_public_keys())) if roster else "",
    })
    times: list[float] = []
    evaluation_times: list[float] = []
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        initial = {"update": np.zeros(params, dtype=np.float32)}
        schema = AdapterSchema.from_state(initial, config.wire_dtype)
        ledger = RoundLedger(RunRecorder(folder / config.run_id, config, {}))
        rule = make_rule("fedavg")
        fold = RoundFold(initial, schema, rule, (), config.privacy)
        strategy = AdapterStrategy(rule, (), config.wire_dtype, fraction_train=1.0, fraction_evaluate=1.0,
                                   min_train_nodes=clients, min_evaluate_nodes=clients, min_available_nodes=clients)
        rule.initialise(fold.global_adapter)
        federated_round = FederatedRound(strategy, fold, ledger, FINGERPRINT, config, round_config(config, FINGERPRINT))
        for server_round in range(1, rounds + 1):
            started = time.perf_counter()
            federated_round.train(grid, server_round)
            times.append(time.perf_counter() - started)
            if rule.count != clients:
                raise RuntimeError(f"round {server_round} aggregated {rule.count} of {clients} clients")
            started = time.perf_counter()
            federated_round.evaluate(grid, server_round)
            evaluation_times.append(time.perf_counter() - started)

    def identity(msg: Message, context: Context, call_next):
        """A virtual node's node key, as `stamen client join` names it in a device's node config."""
        context.node_config[IDENTITY_KEY] = str(keys.node_key(str(context.node_config["partition-id"])))
        return call_next(msg, context)

    run_apps(server_app, client_app_with([identity] if roster else [], train_handler=synthetic_update,
                                         evaluate_handler=synthetic_evaluation), clients)
    rows = RunFolder(folder / config.run_id).rows()
    evaluated = [row for row in rows if row.get("kind") == "round" and row.get("clients_evaluated") == clients]
    if len(evaluated) != rounds:
        raise RuntimeError(f"{len(evaluated)} of {rounds} rounds evaluated every client")
    uploads = [row["bytes_up"] for row in rows if row.get("accepted") and "bytes_up" in row]
    return Cell(times, evaluation_times, int(statistics.median(uploads)), evaluated[-1][HELDOUT_LOSS.eval_mean])


class FixedUpdate(NumPyClient):
    """Flower's side of a synthetic client: a seeded random update of ``params`` values, a fixed loss."""

    def __init__(self, seed: int, params: int) -> None:
        self.update = np.random.default_rng(seed).uniform(-UPDATE_SCALE, UPDATE_SCALE, params).astype(np.float32)

    def fit(self, parameters, config):
        return [self.update], 1, {}

    def evaluate(self, parameters, config):
        return float(self.update[0]), 1, {}


class TimedFedAvg(FedAvg):
    """FedAvg timing each phase from configure_* to the end of aggregate_* (SecAgg+ unmasks in between); a phase
    that did not hear from every client stops the benchmark."""

    def __init__(self, clients: int, **options) -> None:
        super().__init__(**options)
        self.clients, self.fit_s, self.evaluate_s, self._started = clients, [], [], 0.0

    def configure_fit(self, server_round, parameters, client_manager):
        self._started = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):
        self._check(server_round, results, "aggregated")
        aggregated = super().aggregate_fit(server_round, results, failures)
        self.fit_s.append(time.perf_counter() - self._started)
        return aggregated

    def configure_evaluate(self, server_round, parameters, client_manager):
        self._started = time.perf_counter()
        return super().configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(self, server_round, results, failures):
        self._check(server_round, results, "evaluated")
        aggregated = super().aggregate_evaluate(server_round, results, failures)
        self.evaluate_s.append(time.perf_counter() - self._started)
        return aggregated

    def _check(self, server_round: int, results: list, done: str) -> None:
        if len(results) != self.clients:
            raise RuntimeError(f"round {server_round} {done} {len(results)} of {self.clients} clients")


def flower_cell(clients: int, params: int, secure: bool, rounds: int) -> tuple[list[float], list[float]]:
    """Seconds of each round's fit and evaluate through Flower's legacy workflows."""
    holders = min(len(peers) for peers in neighbourhoods(list(range(clients)), 0, random.Random(0)).values()) + 1
    strategy = TimedFedAvg(clients, fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=clients,
                           min_evaluate_clients=clients, min_available_clients=clients,
                           initial_parameters=ndarrays_to_parameters([np.zeros(params, dtype=np.float32)]))
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy)
        # Stamen's default: a secret needs more than half of its holders
        fit = SecAggPlusWorkflow(num_shares=holders, reconstruction_threshold=math.floor(holders / 2) + 1,
                                 max_weight=1.0) if secure else None
        DefaultWorkflow(fit_workflow=fit)(grid, legacy)

    client_app = ClientApp(client_fn=lambda context: FixedUpdate(context.node_id, params).to_client(),
                           mods=[secaggplus_mod] if secure else [])
    run_apps(server_app, client_app, clients)
    return strategy.fit_s, strategy.evaluate_s


def steady(times: list[float]) -> float:
    """The median round time after the first (warm-up) round."""
    return round(statistics.median(times[1:] or times), 3)


def measure_row(clients: int, params: int, rounds: int, folder: Path, flower: bool) -> dict:
    """Every cell of one size; each phase's steady seconds and the ratios the README quotes."""
    plain = stamen_cell(clients, params, False, rounds, folder)
    secure = stamen_cell(clients, params, True, rounds, folder)
    signed = stamen_cell(clients, params, True, rounds, folder, roster=True)
    row = {"clients": clients, "params": params}
    for name, cell in (("plain", plain), ("secure", secure), ("roster", signed)):
        row[f"{name}_s"], row[f"{name}_eval_s"] = steady(cell.train_s), steady(cell.evaluate_s)
        row[f"{name}_upload_bytes"] = cell.upload_bytes
    for name in ("secure", "roster"):
        row[f"{name}_x_plain"] = round(row[f"{name}_s"] / row["plain_s"], 2)
        row[f"{name}_eval_x_plain"] = round(row[f"{name}_eval_s"] / row["plain_eval_s"], 2)
        row[f"{name}_round_x_plain"] = round((row[f"{name}_s"] + row[f"{name}_eval_s"])
                                             / (row["plain_s"] + row["plain_eval_s"]), 2)
    # the secure evaluation's mean against the plain one's, over the same seeded losses: fixed-point error only
    row["secure_eval_mean_error"] = f"{abs(secure.heldout_loss - plain.heldout_loss):.1e}"
    if flower:
        flower_plain, flower_eval = (steady(times) for times in flower_cell(clients, params, False, rounds))
        flower_secure, flower_secure_eval = (steady(times) for times in flower_cell(clients, params, True, rounds))
        row.update(flower_plain_s=flower_plain, flower_secaggplus_s=flower_secure, flower_eval_s=flower_eval,
                   flower_secaggplus_eval_s=flower_secure_eval)
        # how many times Stamen's training overhead over plain fits in SecAgg+'s (which secures training only)
        row["overhead_ratio"] = round((flower_secure - flower_plain) / max(row["secure_s"] - row["plain_s"], 1e-3), 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-flower", action="store_true", help="skip Flower's legacy workflows")
    parser.add_argument("--name", default="secagg", help="results/<name>.json")
    add_results_option(parser)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for params in args.params:
            for clients in args.clients:
                rows.append(measure_row(clients, params, args.rounds, Path(scratch), not args.no_flower))
                print(json.dumps(rows[-1]), flush=True)
    print_table(rows)
    write_results(args.name, rows, args.results, rounds=args.rounds)


if __name__ == "__main__":
    main()
