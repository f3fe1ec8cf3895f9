"""`stamen compare PRESET.toml`: named runs, each over seeds, compared with 95% intervals and paired differences."""

import json
import statistics

import pytest
from inprocess_grid import simulate_in_this_process
from scipy import stats
from typer.testing import CliRunner

from stamen.shared.run_folder import RunFolder
from stamen.simulations.cli import app
from stamen.simulations.preset_comparison import Campaign
from stamen.simulations.report import RunRecord
from stamen.simulations.sweep import simulate_in_subprocess

pytestmark = pytest.mark.usefixtures("flower_task_identity")

PRESET = """
[compare]
clients = 2
rounds = 2
baseline = "global"
seeds = 2
target = 100.0

[config]
base-model = "tiny"
quantisation = "none"
learning-rate = 0.01

[runs.global]
aggregation = "fedavg"

[runs.finetune]
personalisation = "finetune"
personal-steps = 6

[runs.replay]
replay = "buffer,anchor,self,ewc"
replay-self-size = 4
partition = "stream"
stream-stages = 2
"""


@pytest.fixture
def runs_in_this_process(monkeypatch):
    """Each run of a campaign through the server's round loop and the ClientApp in this process (the
    subprocess that `stamen compare` starts per run has its own test below)."""
    monkeypatch.setattr("stamen.simulations.preset_comparison.simulate_in_subprocess", simulate_in_this_process)


def _half_width(values: list[float]) -> float:
    return stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5


def test_a_preset_runs_each_run_for_each_seed_once_and_compares_them_with_intervals(tmp_path, runs_in_this_process):
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET)
    campaign = Campaign.from_toml(preset)
    assert campaign.runs["finetune"] == {"base-model": "tiny", "quantisation": "none", "learning-rate": 0.01,
                                         "personalisation": "finetune", "personal-steps": 6}
    assert (campaign.seeds, campaign.seed_values("global"), campaign.target) == (2, [0, 1], 100.0)
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["compare", str(preset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads((out / "compare.json").read_text())}
    assert set(rows) == {"global", "finetune", "replay"}
    assert all(row["seeds"] == 2 and [s["run"] for s in row["per_seed"]] == ["seed-0", "seed-1"]
               for row in rows.values())

    # every cell is the mean over seeds with its Student-t 95% half-width
    for row in rows.values():
        values = [seed["personal_end"] for seed in row["per_seed"]]
        assert values[0] != values[1]  # the seed changes adapter init, data order and partitions
        assert row["personal_end"]["mean"] == pytest.approx(statistics.fmean(values))
        assert row["personal_end"]["ci95"] == pytest.approx(_half_width(values))
    glob, finetune = rows["global"], rows["finetune"]
    assert all(s["personal_end"] == s["heldout_end"] for s in glob["per_seed"])  # its personal model is the global
    assert all(s["personal_end"] < s["heldout_end"] for s in finetune["per_seed"])

    # against the baseline, seed by seed
    assert glob["forgetting_cut"] is None or glob["forgetting_cut"]["mean"] == 0.0
    assert glob["gain_kept"]["mean"] == 100.0 and glob["gain_kept"]["ci95"] == 0.0
    for name in ("finetune", "replay"):
        pairs = list(zip(rows[name]["per_seed"], glob["per_seed"], strict=True))
        changes = [run["personal_end"] - base["personal_end"] for run, base in pairs]
        assert rows[name]["personal_end_change"]["mean"] == pytest.approx(statistics.fmean(changes))
        assert rows[name]["personal_end_change"]["ci95"] == pytest.approx(_half_width(changes))
        kept = [100 * run["mean_client_gain"] / base["mean_client_gain"] for run, base in pairs]
        assert rows[name]["gain_kept"]["mean"] == pytest.approx(statistics.fmean(kept))
        extra = [100 * (run["client_seconds"] - base["client_seconds"]) / base["client_seconds"] for run, base in pairs]
        assert rows[name]["extra_client_time"]["mean"] == pytest.approx(statistics.fmean(extra))
    assert all(seed["reached_target"] == 1 and seed["rounds_to_target"] == 1 and seed["bytes_to_target"] > 0
               for row in rows.values() for seed in row["per_seed"])  # any loss is below 100 after round 1

    table = (out / "compare.md").read_text()
    assert "| global (baseline) | 2 |" in table and " ± " in table and "1.0 ± 0.0 (2/2 seeds)" in table
    assert ("nothing to cut" in table) == (glob["forgetting_mean"]["mean"] <= 0)
    assert (out / "compare.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "gain_vs_forgetting.png").read_bytes().startswith(b"\x89PNG")
    assert (out / "cost_to_target.png").read_bytes().startswith(b"\x89PNG") and "(cost_to_target.png)" in table
    assert (out / "global" / "seed-1" / "report.md").is_file()
    trained = [r for r in RunFolder(out / "replay" / "seed-0").rows() if r.get("phase") == "train"]
    assert len(trained) == 4 and all(r["accepted"] and r["replay_examples"] > 0 for r in trained)

    finished = {p: p.stat().st_mtime for p in out.glob("*/*/summary.json")}
    again = CliRunner().invoke(app, ["compare", str(preset), "--out", str(out), "--seeds", "3"])
    assert again.exit_code == 0, again.output  # only the third seed of each run is new
    assert {p: p.stat().st_mtime for p in out.glob("*/*/summary.json") if p in finished} == finished
    assert sorted(p.parent.name for p in out.glob("global/*/summary.json")) == ["seed-0", "seed-1", "seed-2"]
    assert all(row["seeds"] == 3 for row in json.loads((out / "compare.json").read_text()))


def test_compare_reads_existing_run_folders_and_seed_folders(tmp_path, runs_in_this_process):
    def run(seed: int, folder, run_id: str) -> None:
        simulate_in_this_process({"base-model": "tiny", "quantisation": "none", "seed": seed,
                                  "forgetting-probes": False}, 2, 1, folder, run_id)

    run(0, tmp_path, "plain")  # a run folder of its own
    for seed in (0, 1):
        run(seed, tmp_path / "seeded", f"seed-{seed}")  # a folder of seed-<n> runs, as a campaign writes them
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "plain"), str(tmp_path / "seeded"), "--out",
                                      str(tmp_path / "out"), "--baseline", "seeded"])
    assert result.exit_code == 0, result.output  # paired over the seeds both ran: seed 0
    paired = {row["run"]: row for row in json.loads((tmp_path / "out" / "compare.json").read_text())}
    assert (paired["plain"]["extra_client_time"]["n"], paired["seeded"]["extra_client_time"]["n"]) == (1, 2)
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "plain"), str(tmp_path / "seeded"), "--out",
                                      str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads((tmp_path / "out" / "compare.json").read_text())}
    assert (rows["plain"]["seeds"], rows["seeded"]["seeds"]) == (1, 2)
    assert rows["plain"]["heldout_end"]["ci95"] is None  # one seed: a mean without an interval
    # runs without the forgetting probes: no empty gain-vs-forgetting plot, and the table links none
    assert not (tmp_path / "out" / "gain_vs_forgetting.png").exists()
    assert "gain_vs_forgetting" not in (tmp_path / "out" / "compare.md").read_text()


def test_a_campaign_run_is_a_stamen_simulate_process_that_reports_its_failure(tmp_path):
    assert simulate_in_subprocess({"base-model": "tiny", "quantisation": "none", "local-steps": 2}, 2, 1, tmp_path,
                                  "ok") is None
    assert RunFolder(tmp_path / "ok").finished() and (tmp_path / "ok" / "report.md").is_file()
    failure = simulate_in_subprocess({"base-model": "tiny", "no-such-key": 1}, 2, 1, tmp_path, "bad")
    assert failure is not None and "run bad failed" in failure and "no-such-key" in (tmp_path / "bad.log").read_text()


def test_a_clients_round_costs_its_training_and_the_choice_of_the_model_it_uses(tmp_path):
    """Client seconds per round: training with its replay and a personal model's, plus choosing alpha where clients
    interpolate; a run
    whose clients interpolated without recording the choice's cost gets no number rather than a low one."""
    train = [{"phase": "train", "accepted": True, "train_seconds": 30.0, "replay_seconds": 2.0},
             {"phase": "train", "accepted": True, "train_seconds": 34.0, "replay_seconds": 0.0}]
    chose = [{"phase": "evaluate", "wise_alpha": 0.25, "wise_seconds": 3.0},
             {"phase": "evaluate", "wise_alpha": 0.5, "wise_seconds": 5.0}]
    assert RunRecord(tmp_path, [], train, {}, None).client_seconds() == 33.0
    assert RunRecord(tmp_path, [], train + chose, {}, None).client_seconds() == 37.0
    unrecorded = [{"phase": "evaluate", "wise_alpha": 0.25}]
    assert RunRecord(tmp_path, [], train + chose[:1] + unrecorded, {}, None).client_seconds() is None
    # a personal model's training counts too (issue: Ditto's was left out, so it looked free): Ditto's beside the
    # global round, a finetune's at evaluation
    ditto = [{**row, "personal_train_seconds": 20.0} for row in train]
    assert RunRecord(tmp_path, [], ditto, {}, None).client_seconds() == 53.0
    finetuned = [{"phase": "evaluate", "personal_train_seconds": seconds} for seconds in (12.0, 8.0)]
    assert RunRecord(tmp_path, [], train + finetuned, {}, None).client_seconds() == 43.0


def test_a_comparison_plots_each_runs_gain_against_retention_round_by_round_and_keeps_every_facts_outcome(tmp_path):
    """Retention and personal gain per round (the curve, not only the end), and each seed's retention of every
    known fact in compare.json, so intervals can run over facts as well as seeds."""
    from stamen.client.evaluation.forgetting import NEUTRAL, forgetting_metrics
    from stamen.client.state_store import ClientStateStore
    from stamen.simulations.comparison import compare_runs

    def seed(name: str, retention: list[float]) -> RunRecord:
        folder = tmp_path / name
        rows = [{"kind": "round", "round": r, "eval_heldout_loss": 3.0 - 0.2 * r, "eval_retention": kept,
                 **({"initial_heldout_loss": 3.0} if r == 1 else {})} for r, kept in enumerate(retention, start=1)]
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        store = ClientStateStore(folder / "clients" / "alice")
        for r, kept in enumerate(retention, start=1):
            forgetting_metrics(store, r, {NEUTRAL: 2.0}, lambda: {NEUTRAL: 2.0},
                               answered={"q1": True, "q2": kept > 0.5})
        return RunRecord.read(folder)

    record = seed("none/seed-0", [1.0, 0.5, 0.25])
    assert record.gain_and_retention() == {1: (pytest.approx(0.2), 1.0), 2: (pytest.approx(0.4), 0.5),
                                           3: (pytest.approx(0.6), 0.25)}
    seed("none/seed-1", [1.0, 0.75, 0.5])
    table = compare_runs({"none": [tmp_path / "none/seed-0", tmp_path / "none/seed-1"]}, tmp_path / "out")
    assert (tmp_path / "out" / "gain_vs_retention.png").stat().st_size > 0
    assert "gain_vs_retention.png" in table.read_text()
    (row,) = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert row["per_fact"] == [{"q1": 1.0, "q2": pytest.approx(1 / 3)}, {"q1": 1.0, "q2": pytest.approx(2 / 3)}]
    assert row["retention_facts"]["facts"] == 2
