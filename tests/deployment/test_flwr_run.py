"""`flwr run .` starts the project's ServerApp/ClientApp from pyproject.toml on a local SuperLink."""

import os
import signal
import subprocess
import sys
from pathlib import Path

from stamen.shared.run_folder import RunFolder

ROOT = Path(__file__).resolve().parents[2]


def _kill_processes_mentioning(text: str) -> None:
    """Stop the SuperLink/SuperExec that `flwr run` leaves running (found by their command line)."""
    parents = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and "flower-" in cmdline:
            parents.append(proc.name)
            os.kill(int(proc.name), signal.SIGKILL)
    for parent in parents:  # SuperExec processes name their SuperLink with --parent-pid
        _kill_processes_mentioning_pid(parent)


def _kill_processes_mentioning_pid(pid: str) -> None:
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if f"--parent-pid {pid}" in cmdline:
            os.kill(int(proc.name), signal.SIGKILL)


def test_flwr_run_uses_the_project_apps(tmp_path):
    flwr_home = tmp_path / "flwr-home"
    env = {
        **os.environ,
        "FLWR_HOME": str(flwr_home),
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    run_config = f"base-model='tiny' quantisation='none' num-server-rounds=1 run-dir='{tmp_path / 'runs'}'"
    try:
        result = subprocess.run(
            [str(Path(sys.executable).parent / "flwr"), "run", ".", "--run-config", run_config, "--stream"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        _kill_processes_mentioning(str(flwr_home))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = RunFolder(run_dir).summary_record()
    assert [r["round"] for r in summary["rounds"]] == [1]
    assert summary["rounds"][0]["clients_accepted"] >= 2
