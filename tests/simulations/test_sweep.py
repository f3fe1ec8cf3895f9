"""`stamen sweep`: a small grid of real simulations, resumable, judged in one table and heat maps."""

import json

from typer.testing import CliRunner

from stamen.simulations.cli import app
from stamen.simulations.sweep import SweepSpec

GRID = """
[sweep]
rules = ["fedavg", "krum"]
attacks = ["sign-flip"]
fractions = [0.0, 0.34]
clients = 3
rounds = 1

[rule-options]
krum = "f=1"

[attack-options]
sign-flip = "scale=5"

[config]
base-model = "tiny"
quantisation = "none"
"""


def test_a_sweep_runs_each_cell_once_and_writes_table_and_heat_maps(tmp_path):
    grid = tmp_path / "grid.toml"
    grid.write_text(GRID)
    assert SweepSpec.from_toml(grid).cells() == [("fedavg", "none", 0.0), ("fedavg", "sign-flip", 0.34),
                                                 ("krum", "none", 0.0), ("krum", "sign-flip", 0.34)]
    out = tmp_path / "sweep"
    result = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(out)])
    assert result.exit_code == 0, result.output
    rows = json.loads((out / "sweep.json").read_text())
    by_cell = {(r["rule"], r["attack"]): r for r in rows}
    assert by_cell[("fedavg", "sign-flip")]["malicious_admitted"] == "1/1"  # a mean admits the attacker
    assert by_cell[("krum", "sign-flip")]["malicious_admitted"] == "0/1"  # Krum keeps an honest update
    assert all(r["honest_heldout_loss"] > 0 for r in rows)
    # the same honest clients, seeds and data in every cell: only the rule differs, and a mean that admits a
    # 5x sign flip moves the global adapter against them, where Krum keeps an honest update
    assert (
        by_cell[("fedavg", "sign-flip")]["honest_heldout_loss"] > by_cell[("krum", "sign-flip")]["honest_heldout_loss"]
    )
    assert "| krum | sign-flip | 0.34 |" in (out / "sweep.md").read_text()
    for metric in ("honest_heldout_loss", "attack_success_rate", "malicious_admitted"):
        assert (out / f"heatmap-{metric}.png").stat().st_size > 1000

    finished = {p: p.stat().st_mtime for p in out.glob("*/summary.json")}
    again = CliRunner().invoke(app, ["sweep", str(grid), "--out", str(out)])  # resumes: nothing left to run
    assert again.exit_code == 0 and {p: p.stat().st_mtime for p in out.glob("*/summary.json")} == finished
