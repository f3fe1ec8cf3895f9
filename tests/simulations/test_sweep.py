"""`stamen sweep`: a small grid over seeds, resumable, judged in one table with intervals and heat maps."""

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from inprocess_grid import simulate_in_this_process
from typer.testing import CliRunner
from waiting import wait_for

from stamen.server.checkpoint import saved_rounds
from stamen.shared.flower_tools import flower_environment
from stamen.shared.process_guard import alive
from stamen.shared.run_folder import RunFolder
from stamen.simulations.cli import app
from stamen.simulations.sweep import SweepSpec

pytestmark = pytest.mark.usefixtures("flower_task_identity")
STAMEN = str(Path(sys.executable).parent / "stamen")

GRID = """
[sweep]
rules = ["fedavg", "krum"]
attacks = ["sign-flip"]
fractions = [0.0, 0.34]
clients = 3
rounds = 1
seeds = 2

[rule-options]
krum = "f=1"

[attack-options]
sign-flip = "scale=5"

[config]
base-model = "tiny"
quantisation = "none"
seed = 7
"""


def test_a_sweep_runs_each_cell_for_each_seed_once_and_writes_table_and_heat_maps(tmp_path, monkeypatch):
    monkeypatch.setattr("stamen.simulations.sweep.simulate_in_subprocess", simulate_in_this_process)
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    spec = SweepSpec.from_toml(grid)
    assert spec.cells() == [("fedavg", "none", 0.0), ("fedavg", "sign-flip", 0.34),
                            ("krum", "none", 0.0), ("krum", "sign-flip", 0.34)]
    assert spec.seed_values() == [7, 8]
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())
    by_cell = {(r["rule"], r["attack"]): r for r in rows}
    assert all(r["seeds"] == 2 and [s["seed"] for s in r["per_seed"]] == [7, 8] for r in rows)
    fedavg, krum = by_cell[("fedavg", "sign-flip")], by_cell[("krum", "sign-flip")]
    assert fedavg["malicious_admitted"] == {"admitted": 2, "sent": 2}  # a mean admits the attacker, every seed
    assert krum["malicious_admitted"] == {"admitted": 0, "sent": 2}  # Krum keeps an honest update
    assert all(r["honest_heldout_loss"]["mean"] > 0 for r in rows)

    # harm: each attacked cell against its rule's clean cell, seed by seed (same partitions and sampled clients),
    # over the same clients: the clean run's loss of the client that is the attacker elsewhere is left out
    clean = by_cell[("fedavg", "none")]
    harms = [statistics.fmean(loss - c["heldout_by_client"][client] for client, loss in a["heldout_by_client"].items())
             for a, c in zip(fedavg["per_seed"], clean["per_seed"], strict=True)]
    assert all(len(a["heldout_by_client"]) == 2 and len(c["heldout_by_client"]) == 3
               for a, c in zip(fedavg["per_seed"], clean["per_seed"], strict=True))
    assert fedavg["harm"]["mean"] == pytest.approx(statistics.fmean(harms)) and fedavg["harm"]["n"] == 2
    assert clean["harm"] is None
    # a mean that admits a 5x sign flip moves the global adapter against the honest clients; Krum does not
    assert all(h > 0 for h in harms) and fedavg["harm"]["mean"] > krum["harm"]["mean"]

    table = (out / "sweep.md").read_text()
    assert "| krum | sign-flip | 0.34 | 2 |" in table and " ± " in table and "Means over 2 seeds" in table
    for metric in ("honest_heldout_loss", "harm", "attack_success_rate", "malicious_admitted"):
        assert (out / f"heatmap-{metric}.png").stat().st_size > 1000

    finished = {p: p.stat().st_mtime for p in out.glob("*/*/summary.json")}
    assert len(finished) == 8
    again = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(out)])  # resumes: nothing left to run
    assert again.exit_code == 0 and {p: p.stat().st_mtime for p in out.glob("*/*/summary.json")} == finished


def test_a_stopped_sweep_stops_its_runs_and_a_rerun_resumes_them_from_their_checkpoints(tmp_path):
    grid, out = tmp_path / "grid.toml", tmp_path / "sweep"
    grid.write_text(GRID.replace('rules = ["fedavg", "krum"]', 'rules = ["fedavg"]').replace(
        "rounds = 1", "rounds = 8").replace("seeds = 2", "seeds = 1").replace("fractions = [0.0, 0.34]",
                                                                            "fractions = [0.0]"))
    run_dir = out / "fedavg__none__0" / "seed-7"
    with (tmp_path / "sweep.log").open("wb") as log:
        sweep = subprocess.Popen([STAMEN, "sweep", str(grid), "--out", str(out)], env=flower_environment(),
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: saved_rounds(run_dir), 240, "the sweep's run to complete a round")
        started = psutil.Process(sweep.pid).children(recursive=True)
        assert any("simulate" in " ".join(p.cmdline()) for p in started)
        sweep.send_signal(signal.SIGTERM)
        sweep.wait(timeout=60)  # it used to exit at once and leave the run (and its Ray) running
        wait_for(lambda: not any(map(alive, started)), 30, "the stopped sweep's run and its processes to end")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(sweep.pid, signal.SIGKILL)
    stopped_at = saved_rounds(run_dir)[-1]
    assert 1 <= stopped_at < 8 and not RunFolder(run_dir).finished()

    again = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(out)])
    assert again.exit_code == 0, again.output
    rounds = [r["round"] for r in RunFolder(run_dir).rows() if r["kind"] == "round"]
    assert rounds == list(range(1, 9)) and "Resuming" in (out / "fedavg__none__0" / "seed-7.log").read_text()
