"""`stamen info` and the shipped presets, as a user meets them."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from typer.testing import CliRunner

from stamen.shared.fingerprint import base_fingerprint
from stamen.simulations.campaign import Campaign
from stamen.simulations.cli import _new_run_config, app
from stamen.simulations.sweep import SweepSpec

PRESETS = sorted((Path(__file__).resolve().parents[1] / "simulations").glob("*.toml"))


def test_info_reports_the_bases_fingerprint_quantisation_and_size(tiny_folder):
    result = CliRunner().invoke(app, ["info", "--base", "tiny", "--quantisation", "int8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines() if ":" in line)
    assert lines["fingerprint"].strip() == base_fingerprint(tiny_folder)
    assert lines["quantisation"].strip().startswith("int8 (int8 requested)")
    stored = sum(f.stat().st_size for f in tiny_folder.glob("*.safetensors"))
    assert lines["stored bytes"].strip() == f"{stored:,}"
    refused = CliRunner().invoke(app, ["info", "--base", "tiny", "--quantisation", "fp3", "--device", "cpu"])
    assert refused.exit_code != 0 and "unknown quantisation mode 'fp3'" in str(refused.exception)


def _runs_of(preset: Path) -> list[tuple[dict, int | None, int | None]]:
    """(flat keys, clients, rounds) of every run a preset starts, as its command would start them."""
    data = tomllib.loads(preset.read_text())
    if "sweep" in data:
        spec = SweepSpec.from_toml(preset)
        return [(spec.cell_settings(*cell), spec.clients, spec.rounds) for cell in spec.cells()]
    if "runs" in data:
        campaign = Campaign.from_toml(preset)
        return [(keys, campaign.clients, campaign.rounds) for keys in campaign.runs.values()]
    return [(data, None, None)]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_shipped_preset_starts_valid_runs(preset):
    runs = _runs_of(preset)
    assert runs, preset
    for keys, clients, rounds in runs:  # what `stamen simulate --set key=value ...` would accept
        config = _new_run_config(None, [f"{k}={v}" for k, v in keys.items()], clients, rounds)
        for key, value in keys.items():
            assert str(config.to_flat()[key]) == str(value), (preset.name, key)
