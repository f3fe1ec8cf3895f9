"""The device's release ledger (client/release_ledger.py): each round answered once, rounds only forward, ε its own."""

from __future__ import annotations

import json

import pytest
from flwr.app import Context, RecordDict
from opacus.accountants import RDPAccountant

from stamen.client.release_ledger import LEDGER_FILE, ReleaseLedger, ReleaseRefused
from stamen.shared.config import RunConfig

CONFIG = RunConfig().replace(**{"num-server-rounds": 5})


def _context(node_config: dict) -> Context:
    return Context(run_id=1, node_id=7, node_config=node_config, state=RecordDict(), run_config={})


def test_a_round_is_released_once_rounds_move_forward_and_stay_within_the_run(tmp_path):
    ledger = ReleaseLedger.of(_context({"state-dir": str(tmp_path)}))
    ledger.begin("run/train", 2, CONFIG, 0.0)
    ledger.begin("run/train", 2, CONFIG, 0.0)  # asked again before anything left: answered again (a retry)
    ledger.release("run/train", 2)
    with pytest.raises(ReleaseRefused, match="round 2 of run/train was released already"):
        ledger.begin("run/train", 2, CONFIG, 0.0)
    with pytest.raises(ReleaseRefused, match="round 1 of run/train comes after round 2: rounds only move forward"):
        ledger.begin("run/train", 1, CONFIG, 0.0)
    for outside in (0, 6):
        with pytest.raises(ReleaseRefused, match=rf"round {outside} is outside the run's 1\.\.5"):
            ledger.begin("run/train", outside, CONFIG, 0.0)
    with pytest.raises(ReleaseRefused, match="not one this device began and has not released"):
        ledger.release("run/train", 2)  # twice
    with pytest.raises(ReleaseRefused, match="not one this device began"):
        ledger.release("run/train", 3)  # never begun
    ledger.begin("run/evaluate", 1, CONFIG, 0.0)  # another phase keeps its own rounds
    ledger.begin("other/train", 1, CONFIG, 0.0)  # another run too
    kept = json.loads((tmp_path / LEDGER_FILE).read_text())  # on disk at every step: a restart keeps it
    assert kept["sessions"]["run/train"] == {"round": 2, "released": True, "noise": 0.0}
    again = ReleaseLedger.of(_context({"state-dir": str(tmp_path)}))
    with pytest.raises(ReleaseRefused, match="released already"):
        again.begin("run/train", 2, CONFIG, 0.0)


def test_a_node_without_a_state_folder_keeps_its_ledger_in_its_context():
    context = _context({})
    ReleaseLedger.of(context).begin("run/train", 1, CONFIG, 2.0)
    ReleaseLedger.of(context).release("run/train", 1, 1.5)
    ledger = ReleaseLedger.of(context)
    assert ledger.noise_multiplier("run/train") == 2.0 and ledger.document["dp-releases"] == [1.5]
    with pytest.raises(ReleaseRefused, match="released already"):
        ledger.begin("run/train", 1, CONFIG, 2.0)
    assert ReleaseLedger.of(_context({})).document["sessions"] == {}  # another node's context: its own ledger


def test_the_devices_epsilon_composes_its_releases_as_opacus_does():
    ledger = ReleaseLedger({}, lambda document: None)
    assert ledger.epsilon(1e-5) == 0.0
    for server_round, multiplier in enumerate((1.2, 0.8), start=1):
        ledger.begin("run/train", server_round, CONFIG, multiplier)
        ledger.release("run/train", server_round, multiplier)
    expected = RDPAccountant()
    for multiplier in (1.2, 0.8):
        expected.step(noise_multiplier=multiplier, sample_rate=1.0)
    assert ledger.epsilon(1e-5) == pytest.approx(expected.get_epsilon(1e-5))
    expected.step(noise_multiplier=2.0, sample_rate=1.0)
    assert ledger.epsilon(1e-5, then=(2.0,)) == pytest.approx(expected.get_epsilon(1e-5))  # without recording it
    assert ledger.document["dp-releases"] == [1.2, 0.8]
