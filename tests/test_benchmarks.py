"""Benchmark scripts run end to end at tiny sizes, so a change that breaks one fails the suite (their numbers are
measured by running them in full, never here)."""

import json
import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_forgetting_cost_times_each_run_paired_by_seed_against_the_first(tmp_path, tiny_folder):
    preset = tmp_path / "tiny.toml"
    preset.write_text('[compare]\nclients = 2\nrounds = 1\n\n[config]\nbase-model = "tiny"\nquantisation = "none"\n'
                      'local-steps = 2\nmax-seq-len = 48\n\n[runs.none]\nreplay = "none"\n\n'
                      '[runs.self]\nreplay = "self"\nreplay-self-size = 2\n')
    command = [sys.executable, "forgetting_cost.py", "--preset", str(preset), "--runs", "none,self", "--seeds", "1",
               "--results", str(tmp_path)]
    result = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = json.loads((tmp_path / "forgetting_cost.json").read_text())["rows"]
    assert [(row["run"], row["seeds"]) for row in rows] == [("none", 1), ("self", 1)]
    assert rows[0]["extra_client_time"] is None and rows[1]["extra_client_time"]["n"] == 1
    assert rows[1]["extra_recurring_time"]["mean"] < rows[1]["extra_client_time"]["mean"]  # the draw's writing apart
    assert "self seed 0:" in result.stdout and "of them first-time" in result.stdout
