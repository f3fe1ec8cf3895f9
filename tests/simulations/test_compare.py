"""`stamen compare PRESET.toml`: named runs, run once each, overlaid in one plot and one table."""

import json

import pytest
from typer.testing import CliRunner

from stamen.shared.run_folder import RunFolder
from stamen.simulations.campaign import Campaign
from stamen.simulations.cli import app

PRESET = """
[compare]
clients = 2
rounds = 2
baseline = "global"

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


def test_a_preset_runs_each_named_run_once_and_compares_them(tmp_path):
    preset = tmp_path / "preset.toml"
    preset.write_text(PRESET)
    assert Campaign.from_toml(preset).runs["finetune"] == {
        "base-model": "tiny", "quantisation": "none", "learning-rate": 0.01, "personalisation": "finetune",
        "personal-steps": 6}
    out = tmp_path / "compare"
    result = CliRunner().invoke(app, ["compare", str(preset), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = {row["run"]: row for row in json.loads((out / "compare.json").read_text())}
    assert set(rows) == {"global", "finetune", "replay"}
    assert rows["global"]["personal_end"] == rows["global"]["heldout_end"]  # its personal model is the global one
    assert rows["finetune"]["personal_end"] < rows["finetune"]["heldout_end"]
    assert "| finetune |" in (out / "compare.md").read_text() and (out / "compare.png").stat().st_size > 1000
    assert (out / "global" / "report.md").is_file()

    # measured against the baseline run, and plotted as personal gain vs forgetting
    assert (rows["global"]["forgetting_cut"], rows["global"]["gain_kept"]) == (0.0, 100.0)
    base = rows["global"]
    for name in ("finetune", "replay"):  # the other runs, each against the baseline's own columns
        row = rows[name]
        assert row["forgetting_cut"] == pytest.approx(
            100 * (base["forgetting_mean"] - row["forgetting_mean"]) / base["forgetting_mean"], abs=0.051)
        assert row["gain_kept"] == pytest.approx(100 * row["mean_client_gain"] / base["mean_client_gain"], abs=0.051)
        assert row["extra_client_time"] == pytest.approx(
            100 * (row["client_seconds"] - base["client_seconds"]) / base["client_seconds"], abs=0.051)
    assert rows["replay"]["extra_client_time"] > 0  # four replay sources cost the clients time
    assert all(isinstance(rows[name]["forgetting_end"], float) and isinstance(rows[name]["forgetting_mean"], float)
               for name in rows)
    assert rows["replay"]["client_seconds"] > 0 and "backward_transfer_end" in rows["replay"]
    assert (out / "gain_vs_forgetting.png").read_bytes().startswith(b"\x89PNG")
    replay_rows = RunFolder(out / "replay").rows()
    trained = [r for r in replay_rows if r.get("phase") == "train"]
    assert len(trained) == 4 and all(r["accepted"] and r["replay_examples"] > 0 for r in trained)
    # every node got the anchor set with its first instruction only, and kept it
    assert sorted(p.parent.name for p in (out / "replay").rglob("anchor-set-r*.json")) == sorted(
        {r["client"] for r in trained})
    assert not list((out / "replay").rglob("anchor-set-r000002.json"))

    finished = {p: p.stat().st_mtime for p in out.glob("*/summary.json")}
    again = CliRunner().invoke(app, ["compare", str(preset), "--out", str(out)])
    assert again.exit_code == 0 and {p: p.stat().st_mtime for p in out.glob("*/summary.json")} == finished
