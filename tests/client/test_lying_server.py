"""A server that lies in its messages learns nothing a device keeps (docs/privacy.md, the threat model's last row).

Every test drives Stamen's real ClientApp, with its mods and real cryptography, through the messages a malicious
server would send to devices holding the operator's key and their own node keys: records the signed config does
not call for, a stage record that switches noise off or declares more clients than the roster, a round sent again,
another run's signed config, a run without a roster. The protocol-level lies (keys of its own, survivor sets
nobody signed, withheld shares) are in tests/server/test_secure_aggregation.py.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Context, Message, MessageType, RecordDict
from inprocess_grid import InProcessGrid
from safetensors.numpy import load_file

from stamen.client.device.release_ledger import ReleaseRefused
from stamen.client.device.signed_app import OPERATOR_KEY
from stamen.client.handlers import TRAINING_HOOKS, StamenClient, client_app_with
from stamen.client.hooks import TrainingHook, TrainingRound
from stamen.server.federation import run_federation
from stamen.server.secure_aggregation import SecAggSettings, SecureAggregator
from stamen.shared.adapters import adapter_state, attach_adapter, shared_state
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.dev_certs import DevCertificates, make_dev_certificates
from stamen.shared.protocol import CONFIG, CONTROL, CONTROL_DELTA, SERVER_ROUND, UnexpectedRecords, round_config
from stamen.shared.run_folder import RunFolder
from stamen.shared.run_signature import UntrustedRun, sign_run
from stamen.shared.secagg_identity import Roster, roster_of
from stamen.shared.secagg_protocol import (
    CONSISTENCY_STAGE,
    MASK_STAGE,
    MASKED,
    MASKED_VECTOR,
    METRIC_NAMES,
    PEERS,
    PUBLIC_KEYS,
    REVEALED,
    SECAGG,
    SHARE_STAGE,
    SHARES,
    SIGNATURES,
    SIGNED,
    UNMASK_STAGE,
    SecAggError,
    session,
)
from stamen.shared.secure_metrics import common_names
from stamen.shared.wire import AdapterSchema, encode_adapter
from stamen.simulations.client_app import SIMULATED_CLIENT, simulated_client_app

pytestmark = pytest.mark.usefixtures("flower_task_identity")
TINY = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "local-steps": 2, "wire-dtype": "float32",
                              "num-server-rounds": 3, "fraction-evaluate": 0.0})
NODES = (101, 102, 103)


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> DevCertificates:
    """The operator's signing key and three devices' node keys, as `stamen certs` makes them."""
    return make_dev_certificates(tmp_path_factory.mktemp("certs"), [], ["device-1", "device-2", "device-3"])


def _signed(certs: DevCertificates, **overrides) -> RunConfig:
    """A secure run listing the three devices, signed by the operator."""
    roster = ",".join(roster_of(certs.node_public_keys()))
    return sign_run(TINY.replace(**{"secure-aggregation": True, "secagg-roster": roster, "run-id": "honest",
                                    **overrides}), certs.operator_key)


class Devices:
    """Three devices running Stamen's ClientApp in this process, each with its node key, the operator's public key
    and a state folder; :meth:`ask` is how a server's message reaches one."""

    def __init__(self, certs: DevCertificates, folder: Path, config: RunConfig, app=None, **node_config) -> None:
        self.config, self.app = config, app or simulated_client_app([])
        self.contexts = {node: Context(run_id=1, node_id=node, state=RecordDict(), run_config={}, node_config={
            "partition-id": i, "num-partitions": 3, "state-dir": str(folder / f"state-{i}"),
            "identity-key": str(certs.node_key(f"device-{i + 1}")), OPERATOR_KEY: str(certs.operator_public_key),
            **node_config}) for i, node in enumerate(NODES)}
        base = load_base("tiny", quantisation="none")
        self.fingerprint = base.fingerprint
        full = adapter_state(attach_adapter(base.model, config.adapter, config.seed))
        self.adapter = {k: v.numpy() for k, v in shared_state(full, config.adapter).items()}
        self.schema = AdapterSchema.from_state(self.adapter, "float32")

    def ask(self, node: int, content: RecordDict, message_type: str = MessageType.TRAIN) -> RecordDict:
        """The device's reply; what it refuses raises, as its ClientApp raises it."""
        reply = self.app(Message(content, dst_node_id=node, message_type=message_type), self.contexts[node])
        assert not reply.has_error(), reply.error
        return reply.content

    def instruction(self, server_round: int, config: RunConfig | None = None, **records) -> RecordDict:
        sent = round_config(config or self.config, self.fingerprint)
        sent[SERVER_ROUND] = server_round
        return RecordDict({"arrays": encode_adapter(self.adapter, "float32"), CONFIG: sent, **records})

    def secure_round(self, nodes: tuple[int, ...], server_round: int, lie=lambda stage, node, content: content,
                     message_type: str = MessageType.TRAIN) -> np.ndarray:
        """One secure round among ``nodes`` as the real server runs it, with ``lie`` rewriting each stage message
        (stage, node, content) before it leaves; the decoded sum."""
        answered = {node: self.ask(node, lie("train", node, self.instruction(server_round)), message_type)
                    for node in nodes}
        names = common_names(tuple(reply[METRIC_NAMES]["names"]) for reply in answered.values())
        num_values = self.schema.num_values if message_type == MessageType.TRAIN else 0
        server = SecureAggregator(session(self.config.run_id, message_type), server_round,
                                  {node: reply[PUBLIC_KEYS] for node, reply in answered.items()},
                                  num_values + 1 + len(names), SecAggSettings(), random.Random(0), names,
                                  Roster(self.config.privacy.secagg_roster))

        def stage(name: str, node: int, **records) -> RecordDict:
            return self.ask(node, lie(name, node, RecordDict(records)), message_type)

        for node, (info, peers) in server.share_requests().items():
            server.add_shares(node, stage(SHARE_STAGE, node, **{SECAGG: info.to_record(), PEERS: peers})[SHARES])
        for node, (info, shares) in server.mask_requests().items():
            masked = stage(MASK_STAGE, node, **{SECAGG: info.to_record(), SHARES: shares})[MASKED]
            server.add_masked(node, masked[MASKED_VECTOR].numpy())
        if server.roster:
            for node, info in server.consistency_requests().items():
                server.add_signature(node, stage(CONSISTENCY_STAGE, node, **{SECAGG: info.to_record()})[SIGNED])
        revealed = {}
        for node, (info, signed) in server.unmask_requests().items():
            records = {SECAGG: info.to_record(), **({SIGNATURES: signed} if signed is not None else {})}
            revealed[node] = stage(UNMASK_STAGE, node, **records)[REVEALED]
        return server.finish(revealed)


# -- 1. hooks switch on from the signed config; nothing but public records leaves in the clear ---------------------

class LeakyHook(TrainingHook):
    """A hook that adds an upload the run's rule never declared (what a control record used to switch on)."""

    def after_training(self, training_round: TrainingRound) -> None:
        training_round.uploads["leak"] = training_round.delta


def test_a_record_the_signed_config_does_not_call_for_is_refused_and_only_public_records_leave(certs, tmp_path):
    """Issue: a server added an unsigned `control` record of zeros to a train message; the device switched SCAFFOLD
    on and its stage-1 reply carried `control-delta` in the clear (trained - global, to 4.9e-7). Now the record is
    refused before anything trains, and a reply a hook built with any record that is not public by design is not
    sent at all."""
    devices = Devices(certs, tmp_path, _signed(certs))
    zeros = encode_adapter({k: np.zeros_like(v) for k, v in devices.adapter.items()}, "float32")
    with pytest.raises(UnexpectedRecords, match=r"does not call for: \['control'\]"):
        devices.ask(101, devices.instruction(1, **{CONTROL: zeros}))
    assert not list((tmp_path / "state-0").glob("*.safetensors"))  # nothing trained, nothing kept

    leaky = client_app_with([], client=StamenClient(SIMULATED_CLIENT.data_source, (*TRAINING_HOOKS, LeakyHook)))
    devices = Devices(certs, tmp_path / "leaky", _signed(certs), app=leaky)
    with pytest.raises(SecAggError, match=r"would carry \['leak'\] in the clear under secure aggregation"):
        devices.ask(101, devices.instruction(1))
    reply = Devices(certs, tmp_path / "honest", _signed(certs)).ask(101, devices.instruction(1))
    assert set(reply) == {"client", "metrics", METRIC_NAMES, PUBLIC_KEYS}  # each listed in docs/privacy.md


def test_scaffold_sums_its_control_change_inside_the_masked_vector_and_moves_as_plain_scaffold_does(tmp_path):
    """The global adapter and the server's control variate after a secure SCAFFOLD round equal plain SCAFFOLD's (to
    the codec's precision; equal secure weights stand in for SCAFFOLD's uniform mean), and neither the delta nor
    the control change ever leaves a device in the clear."""
    sent: list[RecordDict] = []

    def wire(msg, context, call_next):  # outside the secure mod: what leaves the device
        reply = call_next(msg, context)
        sent.append(reply.content)
        return reply

    def run(name: str, secure: bool) -> Path:
        config = TINY.replace(**{"aggregation": "scaffold", "num-server-rounds": 1, "run-dir": str(tmp_path),
                                 "run-id": name, "secure-aggregation": secure, "learning-rate": 0.01,
                                 "secagg-min-weight": 1000.0, "secagg-value-range": 4.0})  # equal weights, as plain
        return run_federation(InProcessGrid(simulated_client_app([wire]), 3), config)

    plain_run = run("plain", False)
    sent.clear()
    secure_run = run("secure", True)
    for name in ("global_adapter.safetensors", "checkpoint.safetensors"):  # the checkpoint holds the control variate
        plain, secure = load_file(plain_run / name), load_file(secure_run / name)
        assert max(float(np.abs(plain[k] - secure[k]).max()) for k in plain) < 1e-6, name
    control = {k: v for k, v in load_file(secure_run / "checkpoint.safetensors").items() if "control/" in k}
    assert control and all(np.abs(v).max() > 0.1 for v in control.values())
    assert sent and not any(CONTROL_DELTA in content or "arrays" in content for content in sent)
    assert [row["clients_accepted"] for row in RunFolder(secure_run).rows() if row["kind"] == "round"] == [3]


# -- 3. noise and every other privacy setting from the signed config -----------------------------------------------

def test_a_stage_record_cannot_switch_noise_off_or_declare_more_clients_than_the_roster(certs, tmp_path):
    """Issue: a server sent `noise-std = 0` in the mask stage; the decoded sum carried no noise (std 4.7e-9 against
    1.02 honest) while the accountant recorded z = 1. A device sizes its noise share from the signed config; a stage
    record with a field the protocol does not have is refused, and the one count it may declare (the clients the
    noise is shared among) cannot exceed the roster."""
    config = _signed(certs, **{"dp": "distributed", "dp-clip": 0.05})
    devices = Devices(certs, tmp_path, config)

    def noise_off(stage, node, content):
        if stage == MASK_STAGE:
            content[SECAGG]["noise-std"] = 0.0
        return content

    with pytest.raises(SecAggError, match=r"fields this protocol does not have: \['noise-std'\]"):
        devices.secure_round(NODES, 1, noise_off)

    def many(stage, node, content):
        if stage == SHARE_STAGE:
            content[SECAGG]["num-clients"] = 1000
        return content

    with pytest.raises(SecAggError, match="declares 1000 clients; a secure round has 2 to 3"):
        Devices(certs, tmp_path / "many", config).secure_round(NODES, 1, many)


def test_a_device_holding_the_operator_key_takes_part_in_a_secure_run_only_under_a_roster(certs, tmp_path):
    unlisted = sign_run(TINY.replace(**{"secure-aggregation": True, "run-id": "unlisted"}), certs.operator_key)
    devices = Devices(certs, tmp_path, unlisted)
    with pytest.raises(UntrustedRun, match=r"secure run without a roster of its devices \(secagg-roster\)"):
        devices.ask(101, devices.instruction(1))


def test_a_device_stops_before_its_own_epsilon_would_pass_its_budget_whatever_the_server_declares(certs, tmp_path):
    """Distributed DP, z = 2: each release is accounted at z sqrt(t/n), what the smallest decodable sum (t = 2 of
    n = 3 shares) carries. A budget that fits two such releases stops the device at the third round; a device with
    a budget refuses a run without distributed DP."""
    from stamen.shared.dp_accountant import PrivacyAccountant

    accountant = PrivacyAccountant(1e-5)
    for _ in range(2):
        accountant.record_round(2.0 * np.sqrt(2 / 3), 1.0)
    two = accountant.epsilon()
    config = _signed(certs, **{"dp": "distributed", "dp-clip": 0.05, "dp-noise-multiplier": 2.0})
    devices = Devices(certs, tmp_path, config, **{"max-epsilon": two * 1.01})
    for server_round in (1, 2):
        devices.secure_round(NODES, server_round)
    with pytest.raises(ReleaseRefused, match="past its budget max-epsilon"):
        devices.secure_round(NODES, 3)
    plain = _signed(certs, **{"run-id": "no-dp"})
    with pytest.raises(ReleaseRefused, match="trains only under distributed DP"):
        Devices(certs, tmp_path / "plain", plain, **{"max-epsilon": 10.0}).ask(101, devices.instruction(1, plain))


# -- 4. one answer per (run, phase, round) -------------------------------------------------------------------------

def test_a_round_is_released_once_so_resent_rounds_cannot_solve_one_devices_update(certs, tmp_path):
    """Issue: the same round's train message sent again was answered with the identical kept update; three
    two-client secure sums (A+B, A+C, B+C) then solve A = (AB + AC - BC) / 2 (to 4.7e-10). A device releases each
    round's masked input once: the server gets A+B, and A refuses round 1 from then on, also after a restart."""
    devices = Devices(certs, tmp_path, _signed(certs, **{"secagg-threshold": 0.5}))
    devices.secure_round((101, 102), 1)  # A + B
    with pytest.raises(ReleaseRefused, match="round 1 of honest/train was released already"):
        devices.secure_round((101, 103), 1)  # A + C
    devices.secure_round((102, 103), 2)
    with pytest.raises(ReleaseRefused, match="round 1 of honest/train comes after round 2: rounds only move forward"):
        devices.ask(102, devices.instruction(1))
    with pytest.raises(ReleaseRefused, match=r"round 4 is outside the run's 1\.\.3"):
        devices.ask(102, devices.instruction(4))
    restarted = Devices(certs, tmp_path, devices.config)  # new processes, the same state folders
    with pytest.raises(ReleaseRefused, match="was released already"):
        restarted.secure_round((101, 103), 1)


# -- 5. a config is bound to its run -------------------------------------------------------------------------------

def test_a_config_the_operator_signed_for_another_run_is_refused_mid_run(certs, tmp_path):
    """Issue: a config the operator signed for another run (secure aggregation off) was accepted mid-run, and the
    device sent its plain update and metrics. The run is pinned to the signed config it started with."""
    this_run, other = _signed(certs), sign_run(TINY.replace(**{"run-id": "other"}), certs.operator_key)
    devices = Devices(certs, tmp_path, this_run)
    devices.ask(101, devices.instruction(1))  # the first message pins the run
    with pytest.raises(UntrustedRun, match="signed for another run"):
        devices.ask(101, devices.instruction(2, other))
    started = Devices(certs, tmp_path / "started", this_run)
    started.contexts[101].run_config = this_run.to_flat()  # as Flower hands a deployed device the run's config
    with pytest.raises(UntrustedRun, match="signed for another run"):
        started.ask(101, started.instruction(1, other))
    with pytest.raises(UntrustedRun, match="not signed by this device's operator key"):
        started.ask(101, started.instruction(1, this_run.replace(**{"secure-aggregation": False})))


def test_scaffold_switches_on_from_the_signed_rule_and_a_control_variate_comes_only_with_training(certs, tmp_path):
    devices = Devices(certs, tmp_path, _signed(certs, aggregation="scaffold"))
    zeros = encode_adapter({k: np.zeros_like(v) for k, v in devices.adapter.items()}, "float32")
    with pytest.raises(UnexpectedRecords, match=r"evaluate message carries records .*\['control'\]"):
        devices.ask(101, devices.instruction(1, **{CONTROL: zeros}), MessageType.EVALUATE)
    with pytest.raises(ValueError, match="the run's rule is SCAFFOLD, but the server sent no control variate"):
        devices.ask(101, devices.instruction(1))
    assert PUBLIC_KEYS in devices.ask(102, devices.instruction(1, **{CONTROL: zeros}))
