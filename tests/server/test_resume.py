"""Checkpoint and resume: a run killed in the middle of a round, resumed, ends where an uninterrupted run ends,
on the server (the global adapter) and on every device (personal adapters, wire residuals)."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from safetensors.numpy import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from stamen.server.checkpoint import load_checkpoint
from stamen.shared.process_guard import alive
from stamen.shared.run_folder import RunFolder

STAMEN = str(Path(sys.executable).parent / "stamen")
ROUNDS = 2
# enough local steps that a round lasts seconds, so the kill lands inside round 2
COMMON = ("base-model=tiny", "quantisation=none", "learning-rate=0.005", "seed=3", "local-steps=40", "tensorboard=true")
SETTINGS = {
    # server optimiser state, the device's personal B (fedsa) and its 8-bit wire residual; stopped by SIGKILL
    "fedadam-fedsa-int8": ("aggregation=fedadam", "lora-aggregation=fedsa", "wire-dtype=int8"),
    # the masked sum, and Ditto's personal adapter trained beside the global one; stopped by SIGTERM
    "secure-ditto": ("secure-aggregation=true", "personalisation=ditto"),
}
STOPPED_BY = {"fedadam-fedsa-int8": signal.SIGKILL, "secure-ditto": signal.SIGTERM}


def _args(run_dir: Path, run_id: str, settings: tuple[str, ...]) -> list[str]:
    args = [STAMEN, "simulate", "--clients", "3", "--rounds", str(ROUNDS)]
    for item in (*COMMON, *settings, f"run-dir={run_dir}", f"run-id={run_id}"):
        args += ["--set", item]
    return args


def _device_state(run: Path, server_round: int) -> dict[str, dict[str, np.ndarray]]:
    """Every client's saved state of ``server_round``, by client folder and file."""
    return {f"{path.parent.name}/{path.name}": load_file(path)
            for path in sorted((run / "clients").glob(f"*/*-r{server_round:06d}.safetensors"))}


def _kill_inside_round_2(run: Path, process: subprocess.Popen, number: signal.Signals) -> None:
    """Send ``number`` to ``stamen simulate`` alone once round 1 is checkpointed and a device has saved round-2
    state; everything it started (Ray's processes) must stop with it."""
    deadline = time.time() + 240
    while time.time() < deadline:
        state = load_checkpoint(run) if RunFolder(run).checkpoint.is_file() else None
        if state is not None and state.round == 1 and _device_state(run, 2):
            break
        time.sleep(0.1)
    else:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError("round 2 never began on a device")
    started = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(number)
    process.wait(timeout=60)
    deadline = time.time() + 30
    while any(map(alive, started)) and time.time() < deadline:
        time.sleep(0.5)
    left = [p.name() for p in started if alive(p)]
    with contextlib.suppress(ProcessLookupError):  # a safety net for the assertion below: the group may be gone
        os.killpg(process.pid, signal.SIGKILL)
    assert not left, f"{left} outlived stamen simulate after {number.name}"


@pytest.mark.parametrize("name", SETTINGS)
def test_resume_after_a_kill_mid_round_equals_an_uninterrupted_run_and_nothing_outlives_the_kill(name, tmp_path):
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    settings = SETTINGS[name]
    subprocess.run(_args(tmp_path, "full", settings), check=True, env=env, capture_output=True, timeout=400)

    killed = tmp_path / "killed"
    process = subprocess.Popen(_args(tmp_path, "killed", settings), env=env, start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _kill_inside_round_2(killed, process, STOPPED_BY[name])
    # the kill landed mid-round: a device had trained round 2, the server had not finished it
    assert load_checkpoint(killed).round == 1
    assert _device_state(killed, 2) and not RunFolder(killed).finished()

    resumed = subprocess.run([STAMEN, "simulate", "--resume", str(killed)], env=env, capture_output=True,
                             text=True, timeout=400)
    assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-2000:]
    full, again = (
        load_file(tmp_path / "full" / "global_adapter.safetensors"),
        load_file(killed / "global_adapter.safetensors"),
    )
    assert set(full) == set(again)
    for key in full:
        np.testing.assert_array_equal(full[key], again[key])
    full_devices, resumed_devices = _device_state(tmp_path / "full", ROUNDS), _device_state(killed, ROUNDS)
    personal = "personal" if "fedsa" in name else "ditto"
    assert sum(personal in file for file in full_devices) == 3  # each device kept its personal part
    assert ("int8" not in name) or sum("wire-residual" in file for file in full_devices) == 3
    assert set(full_devices) == set(resumed_devices)
    for file, arrays in full_devices.items():
        for key, value in arrays.items():
            np.testing.assert_array_equal(value, resumed_devices[file][key], err_msg=f"{file}:{key}")
    rows = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if r["kind"] == "round"] == list(range(1, ROUNDS + 1))
    assert sum(1 for r in rows if r["kind"] == "client" and r["phase"] == "train") == 3 * ROUNDS
    # TensorBoard shows each round once: what the killed process logged of round 2 is purged on resume
    board = EventAccumulator(str(killed / "tensorboard"))
    board.Reload()
    assert [event.step for event in board.Scalars("round/eval_heldout_loss")] == list(range(1, ROUNDS + 1))
    for tag in (t for t in board.Tags()["scalars"] if t.startswith("train/train_loss/")):
        assert [event.step for event in board.Scalars(tag)] == list(range(1, ROUNDS + 1)), tag
