"""What this device has released, so that no server can make it release one round twice or past its budget.

A server that sends one round's train message again gets the device's update summed again, with other
clients: a few such sums solve one client's update. So the device answers each (run, phase, round) once
under secure aggregation: before its masked input leaves it records the round as released, and refuses it
from then on. Rounds only move forward within a run and phase, and never past the run's last (plain rounds
too, whose update the server sees anyway and may ask for again after a crash).

Under distributed DP the device keeps its own accountant. Its noise share is sized for the ``n`` clients
the server declares, and a server can decode the sum of as few as ``t`` of them (each survivor's seed
needs ``t`` holders that are survivors), so a release is accounted at the multiplier the smallest
decodable sum carries, ``z * sqrt(t / n)``. A device with a budget (node config ``max-epsilon``, at
``epsilon-delta``) takes part only in distributed-DP training and stops before a release would take its
ε past the budget, whatever the server declares.

The ledger lives in the device's state folder (``state-dir``: it outlives restarts of the device and of
the server), or, for a simulated node without one, in the node's context while the simulation runs.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, MessageType
from flwr.clientapp.typing import ClientAppCallable

from stamen.shared.atomic import atomic_write_text
from stamen.shared.config import RunConfig
from stamen.shared.dp_accountant import PrivacyAccountant
from stamen.shared.protocol import CONFIG, read_instruction
from stamen.shared.secagg_protocol import MASK_STAGE, SECAGG, StageInfo, session

log = logging.getLogger(__name__)

LEDGER_FILE = "release-ledger.json"
LEDGER_STATE = "release-ledger"  # the context's record for a node without a state folder
MAX_EPSILON_KEY = "max-epsilon"  # node config: the device's privacy budget
EPSILON_DELTA_KEY = "epsilon-delta"  # node config: the δ its ε is measured at
DEFAULT_EPSILON_DELTA = 1e-5


class ReleaseRefused(RuntimeError):
    """A message this device will not answer: the round was released already, lies behind, or would pass the
    device's privacy budget."""


class ReleaseLedger:
    """Per session (run and message type): the last round answered, whether its masked input left, and the
    noise multiplier it would carry; across runs: the multipliers of every DP release."""

    def __init__(self, document: dict[str, Any], save: Callable[[dict[str, Any]], None]) -> None:
        self.document = {"sessions": {}, "dp-releases": [], **document}
        self._save = save

    @classmethod
    def of(cls, context: Context) -> ReleaseLedger:
        """The node's ledger: a file in its state folder, or its context's record."""
        folder = context.node_config.get("state-dir")
        if folder:
            path = Path(str(folder)) / LEDGER_FILE
            document = json.loads(path.read_text()) if path.is_file() else {}
            return cls(document, lambda doc: atomic_write_text(path, json.dumps(doc)))
        record = context.state.config_records.get(LEDGER_STATE)

        def keep(doc: dict[str, Any]) -> None:
            context.state[LEDGER_STATE] = ConfigRecord({"json": json.dumps(doc)})

        return cls(json.loads(str(record["json"])) if record is not None else {}, keep)

    def begin(self, name: str, server_round: int, config: RunConfig, noise_multiplier: float) -> None:
        """A stage-1 message of round ``server_round`` in session ``name``: refuse a round after the run's last,
        before the last answered, or already released; otherwise note it (with the multiplier its release would
        carry under distributed DP, 0 otherwise)."""
        if not 1 <= server_round <= config.num_rounds:
            raise ReleaseRefused(f"round {server_round} is outside the run's 1..{config.num_rounds}")
        last = self.document["sessions"].get(name)
        if last is not None and server_round < last["round"]:
            raise ReleaseRefused(f"round {server_round} of {name} comes after round {last['round']}: rounds only "
                                 f"move forward")
        if last is not None and server_round == last["round"] and last["released"]:
            raise ReleaseRefused(f"round {server_round} of {name} was released already; a round is answered once")
        self.document["sessions"][name] = {"round": server_round, "released": False, "noise": noise_multiplier}
        self._save(self.document)

    def release(self, name: str, server_round: int, noise_multiplier: float | None = None) -> None:
        """Record, before it leaves, that round ``server_round``'s masked input is released (a DP release at
        ``noise_multiplier``); refuse a round not begun or released already."""
        entry = self.document["sessions"].get(name)
        if entry is None or entry["round"] != server_round or entry["released"]:
            raise ReleaseRefused(f"round {server_round} of {name} is not one this device began and has not "
                                 f"released")
        entry["released"] = True
        if noise_multiplier:
            self.document["dp-releases"].append(noise_multiplier)
        self._save(self.document)

    def noise_multiplier(self, name: str) -> float:
        """The multiplier noted for session ``name``'s current round (0: no DP release)."""
        entry = self.document["sessions"].get(name)
        return float(entry["noise"]) if entry else 0.0

    def epsilon(self, delta: float, then: tuple[float, ...] = ()) -> float:
        """ε at ``delta`` of every DP release so far, and of ``then`` after them."""
        accountant = PrivacyAccountant(delta)
        for multiplier in (*self.document["dp-releases"], *then):
            accountant.record_round(multiplier, 1.0)
        return accountant.epsilon()


def release_ledger_mod(msg: Message, context: Context, call_next: ClientAppCallable) -> Message:
    """Consult and keep the node's ledger around the secure-aggregation mod (see the module docstring)."""
    message_type, content = msg.metadata.message_type, msg.content
    if message_type not in (MessageType.TRAIN, MessageType.EVALUATE):
        return call_next(msg, context)
    ledger, budget = ReleaseLedger.of(context), _Budget.of(context)
    if SECAGG in content.config_records:
        info = StageInfo.from_record(content[SECAGG])
        if info.stage != MASK_STAGE:
            return call_next(msg, context)
        release = ledger.noise_multiplier(info.run) * math.sqrt(min(1.0, info.threshold / max(info.num_clients, 1)))
        budget.check(ledger, (release,) if release else ())
        reply = call_next(msg, context)
        if not reply.has_error():
            ledger.release(info.run, info.server_round, release)
            budget.report(ledger)
        return reply
    if CONFIG not in content.config_records:
        return call_next(msg, context)
    instruction = read_instruction(content)
    config = instruction.config
    noised = config.privacy.dp == "distributed" and message_type == MessageType.TRAIN
    if budget and message_type == MessageType.TRAIN and not noised:
        raise ReleaseRefused(f"this device has a privacy budget ({MAX_EPSILON_KEY}) and trains only under "
                             f"distributed DP; the run's dp is {config.privacy.dp!r}")
    if noised:
        budget.check(ledger, (config.privacy.dp_noise_multiplier,))  # the least a release can cost: stop early
    ledger.begin(session(config.run_id, message_type), instruction.server_round, config,
                 config.privacy.dp_noise_multiplier if noised else 0.0)
    return call_next(msg, context)


class _Budget:
    """The device's own privacy budget, if its node config sets one."""

    def __init__(self, max_epsilon: float | None, delta: float) -> None:
        self.max_epsilon, self.delta = max_epsilon, delta

    @classmethod
    def of(cls, context: Context) -> _Budget:
        node = context.node_config
        limit = node.get(MAX_EPSILON_KEY)
        return cls(float(limit) if limit is not None else None, float(node.get(EPSILON_DELTA_KEY,
                                                                              DEFAULT_EPSILON_DELTA)))

    def __bool__(self) -> bool:
        return self.max_epsilon is not None

    def check(self, ledger: ReleaseLedger, then: tuple[float, ...]) -> None:
        if self.max_epsilon is None or not then:
            return
        epsilon = ledger.epsilon(self.delta, then)
        if epsilon > self.max_epsilon:
            raise ReleaseRefused(f"this release would take the device's ε to {epsilon:.3g} at δ {self.delta:g}, "
                                 f"past its budget {MAX_EPSILON_KEY} = {self.max_epsilon:g}: it takes no more part")

    def report(self, ledger: ReleaseLedger) -> None:
        if ledger.document["dp-releases"]:
            log.info("this device's ε after %d DP releases: %.3g at δ %g%s", len(ledger.document["dp-releases"]),
                     ledger.epsilon(self.delta), self.delta,
                     f" (budget {self.max_epsilon:g})" if self.max_epsilon is not None else "")
