"""`stamen compare PRESET.toml`: named runs, run once each, overlaid in one plot and one table."""

import json

from typer.testing import CliRunner

from stamen.simulations.campaign import Campaign
from stamen.simulations.cli import app

PRESET = """
[compare]
clients = 2
rounds = 1

[config]
base-model = "tiny"
quantisation = "none"
learning-rate = 0.01

[runs.global]
aggregation = "fedavg"

[runs.finetune]
personalisation = "finetune"
personal-steps = 6
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
    assert set(rows) == {"global", "finetune"}
    assert rows["global"]["personal_end"] == rows["global"]["heldout_end"]  # its personal model is the global one
    assert rows["finetune"]["personal_end"] < rows["finetune"]["heldout_end"]
    assert "| finetune |" in (out / "compare.md").read_text() and (out / "compare.png").stat().st_size > 1000
    assert (out / "global" / "report.md").is_file()

    finished = {p: p.stat().st_mtime for p in out.glob("*/summary.json")}
    again = CliRunner().invoke(app, ["compare", str(preset), "--out", str(out)])
    assert again.exit_code == 0 and {p: p.stat().st_mtime for p in out.glob("*/summary.json")} == finished
