"""The device's release ledger (client/device/release_ledger.py): each round answered once, rounds only forward,
ε its own."""


from __future__ import annotations

import json
import math

import pytest
from flwr.app import Context, Error, Message, MessageType, RecordDict
from opacus.accountants import RDPAccountant

from stamen.client.device.release_ledger import (
    LEDGER_FILE,
    MAX_EPSILON_KEY,
    ReleaseLedger,
    ReleaseRefused,
    release_ledger_mod,
)
from stamen.shared.config import RunConfig
from stamen.shared.protocol import CONFIG, SERVER_ROUND, round_config
from stamen.shared.secagg_protocol import MASK_STAGE, SECAGG, SHARE_STAGE, StageInfo, session

pytestmark = pytest.mark.usefixtures("flower_task_identity")
FIVE_ROUNDS = RunConfig().replace(**{"num-server-rounds": 5})


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_a_round_is_released_once_rounds_move_forward_and_stay_within_the_run(tmp_path):
    ledger = ReleaseLedger.of(_context({"state-dir": str(tmp_path)}))
    ledger.begin("run/train", 2, FIVE_ROUNDS, 0.0)
    ledger.begin("run/train", 2, FIVE_ROUNDS, 0.0)  # asked again before anything left: answered again (a retry)
    ledger.release("run/train", 2)
    with pytest.raises(ReleaseRefused, match="round 2 of run/train was released already"):
        ledger.begin("run/train", 2, FIVE_ROUNDS, 0.0)
    with pytest.raises(ReleaseRefused, match="round 1 of run/train comes after round 2: rounds only move forward"):
        ledger.begin("run/train", 1, FIVE_ROUNDS, 0.0)
    for outside in (0, 6):
        with pytest.raises(ReleaseRefused, match=rf"round {outside} is outside the run's 1\.\.5"):
            ledger.begin("run/train", outside, FIVE_ROUNDS, 0.0)
    with pytest.raises(ReleaseRefused, match="not one this device began and has not released"):
        ledger.release("run/train", 2)  # twice
    with pytest.raises(ReleaseRefused, match="not one this device began"):
        ledger.release("run/train", 3)  # never begun
    ledger.begin("run/evaluate", 1, FIVE_ROUNDS, 0.0)  # another phase keeps its own rounds
    ledger.begin("other/train", 1, FIVE_ROUNDS, 0.0)  # another run too
    kept = json.loads((tmp_path / LEDGER_FILE).read_text())  # on disk at every step: a restart keeps it
    assert kept["sessions"]["run/train"] == {"round": 2, "released": True, "noise": 0.0}
    again = ReleaseLedger.of(_context({"state-dir": str(tmp_path)}))
    with pytest.raises(ReleaseRefused, match="released already"):
        again.begin("run/train", 2, FIVE_ROUNDS, 0.0)


def test_a_node_without_a_state_folder_keeps_its_ledger_in_its_context():
    context = _context({})
    ReleaseLedger.of(context).begin("run/train", 1, FIVE_ROUNDS, 2.0)
    ReleaseLedger.of(context).release("run/train", 1, 1.5)
    ledger = ReleaseLedger.of(context)
    assert ledger.noise_multiplier("run/train") == 2.0 and ledger.document["dp-releases"] == [1.5]
    with pytest.raises(ReleaseRefused, match="released already"):
        ledger.begin("run/train", 1, FIVE_ROUNDS, 2.0)
    assert ReleaseLedger.of(_context({})).document["sessions"] == {}  # another node's context: its own ledger


def test_the_devices_epsilon_composes_its_releases_as_opacus_does():
    ledger = ReleaseLedger({}, lambda document: None)
    assert ledger.epsilon(1e-5) == 0.0
    for server_round, multiplier in enumerate((1.2, 0.8), start=1):
        ledger.begin("run/train", server_round, FIVE_ROUNDS, multiplier)
        ledger.release("run/train", server_round, multiplier)
    expected = RDPAccountant()
    for multiplier in (1.2, 0.8):
        expected.step(noise_multiplier=multiplier, sample_rate=1.0)
    assert ledger.epsilon(1e-5) == pytest.approx(expected.get_epsilon(1e-5))
    expected.step(noise_multiplier=2.0, sample_rate=1.0)
    assert ledger.epsilon(1e-5, then=(2.0,)) == pytest.approx(expected.get_epsilon(1e-5))  # without recording it
    assert ledger.document["dp-releases"] == [1.2, 0.8]


def _message(kind: str, config: RunConfig, server_round: int, stage: str | None = None, **info) -> Message:
    """A server's stage-1 message (config and round) or a later stage's (``stage``: its record)."""
    if stage is None:
        sent = round_config(config, "sha256:" + "ab" * 32)
        sent[SERVER_ROUND] = server_round
        content = RecordDict({CONFIG: sent})
    else:
        record = StageInfo(session(config.run_id, kind), server_round, stage, info.get("clients", 3),
                           info.get("threshold", 2), 1, 32)
        content = RecordDict({SECAGG: record.to_record()})
    return Message(content, dst_node_id=7, message_type=kind)


def _answered(msg: Message, context: Context) -> Message:
    return Message(RecordDict(), reply_to=msg)


def test_the_mod_notes_each_round_records_each_masked_release_and_refuses_what_the_ledger_forbids():
    config = RunConfig().replace(**{"run-id": "r", "secure-aggregation": True, "num-server-rounds": 3})
    context = _context({})
    for kind in (MessageType.TRAIN, MessageType.EVALUATE):
        release_ledger_mod(_message(kind, config, 1), context, _answered)
        release_ledger_mod(_message(kind, config, 1, SHARE_STAGE), context, _answered)  # no release at this stage
        release_ledger_mod(_message(kind, config, 1, MASK_STAGE), context, _answered)
    ledger = ReleaseLedger.of(context)
    assert ledger.document["sessions"]["r/train"] == ledger.document["sessions"]["r/evaluate"] == {
        "round": 1, "released": True, "noise": 0.0}
    with pytest.raises(ReleaseRefused, match="released already"):
        release_ledger_mod(_message(MessageType.TRAIN, config, 1), context, _answered)
    with pytest.raises(ReleaseRefused, match="not one this device began"):
        release_ledger_mod(_message(MessageType.TRAIN, config, 2, MASK_STAGE), context, _answered)

    def failed(msg: Message, ctx: Context) -> Message:
        return Message(Error(code=0, reason="the handler raised"), reply_to=msg)

    release_ledger_mod(_message(MessageType.TRAIN, config, 2), context, _answered)
    release_ledger_mod(_message(MessageType.TRAIN, config, 2, MASK_STAGE), context, failed)
    assert not ReleaseLedger.of(context).document["sessions"]["r/train"]["released"]  # nothing left the device
    query = Message(RecordDict(), dst_node_id=7, message_type=MessageType.QUERY)
    assert release_ledger_mod(query, context, _answered).metadata.reply_to_message_id == query.metadata.message_id


def test_under_distributed_dp_a_device_accounts_the_smallest_decodable_sum_and_keeps_to_its_budget():
    config = RunConfig().replace(**{"run-id": "dp", "secure-aggregation": True, "dp": "distributed",
                                    "dp-noise-multiplier": 2.0, "num-server-rounds": 5})
    release = 2.0 * math.sqrt(2 / 8)  # t = 2 of n = 8 noise shares: what the fewest survivors' sum carries
    expected = RDPAccountant()
    expected.step(noise_multiplier=release, sample_rate=1.0)
    context = _context({MAX_EPSILON_KEY: expected.get_epsilon(1e-5) * 1.001})
    release_ledger_mod(_message(MessageType.TRAIN, config, 1), context, _answered)
    release_ledger_mod(_message(MessageType.TRAIN, config, 1, MASK_STAGE, clients=8), context, _answered)
    assert ReleaseLedger.of(context).document["dp-releases"] == [pytest.approx(release)]
    with pytest.raises(ReleaseRefused, match="past its budget max-epsilon"):  # even the least a round costs is too
        release_ledger_mod(_message(MessageType.TRAIN, config, 2), context, _answered)
    budgeted = _context({MAX_EPSILON_KEY: 100.0})
    release_ledger_mod(_message(MessageType.TRAIN, config, 1), budgeted, _answered)
    with pytest.raises(ReleaseRefused, match="past its budget"):  # 1000 declared clients: each adds next to no noise
        release_ledger_mod(_message(MessageType.TRAIN, config, 1, MASK_STAGE, clients=1000, threshold=2), budgeted,
                           _answered)
    release_ledger_mod(_message(MessageType.EVALUATE, config.replace(dp="none", **{"secure-aggregation": True}), 1),
                       budgeted, _answered)  # metrics are not the adapter: the budget covers training
    with pytest.raises(ReleaseRefused, match="trains only under distributed DP"):
        release_ledger_mod(_message(MessageType.TRAIN, config.replace(dp="none"), 1), budgeted, _answered)
