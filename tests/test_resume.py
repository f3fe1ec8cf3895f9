"""Checkpoint and resume: a run killed in the middle of a round, resumed, ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from stamen.server.checkpoint import CHECKPOINT_FILE, load_checkpoint

STAMEN = str(Path(sys.executable).parent / "stamen")
COMMON = ["--clients", "3", "--rounds", "3"]
# enough local steps that a round lasts seconds, so the kill lands inside round 2
SETTINGS = ("base-model=tiny", "quantisation=none", "aggregation=fedadam", "learning-rate=0.005", "seed=3",
            "local-steps=80")


def _args(run_dir: Path, run_id: str) -> list[str]:
    args = [STAMEN, "simulate", *COMMON]
    for item in (*SETTINGS, f"run-dir={run_dir}", f"run-id={run_id}"):
        args += ["--set", item]
    return args


def _final_adapter(run: Path) -> dict[str, np.ndarray]:
    return load_file(run / "global_adapter.safetensors")


def test_resume_after_a_kill_mid_round_equals_an_uninterrupted_run(tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    subprocess.run(_args(tmp_path, "full"), check=True, env=env, capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_args(tmp_path, "killed"), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline:  # wait until round 1 is checkpointed and round 2 has begun
        state = load_checkpoint(killed) if (killed / CHECKPOINT_FILE).is_file() else None
        if state is not None and state.round == 1:
            break
        time.sleep(0.2)
    else:
        process.kill()
        raise AssertionError("round 1 never completed")
    time.sleep(0.3)
    os.killpg(process.pid, signal.SIGKILL)  # the driver, Ray and its workers, mid-round
    process.wait()
    assert load_checkpoint(killed).round == 1
    assert not (killed / "summary.json").exists()

    resumed = subprocess.run([STAMEN, "simulate", "--resume", str(killed)], env=env, capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    full, again = _final_adapter(tmp_path / "full"), _final_adapter(killed)
    assert set(full) == set(again)
    for name in full:
        np.testing.assert_array_equal(full[name], again[name])
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if r["kind"] == "round"] == [1, 2, 3]
    assert sum(1 for r in rows if r["kind"] == "client" and r["phase"] == "train") == 9
