"""Real Stamen server and device processes on 127.0.0.1, as the README's deployment section starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
from waiting import wait_for

from stamen.shared.flower_tools import flower_environment, free_port
from stamen.shared.process_guard import alive

STAMEN = str(Path(sys.executable).parent / "stamen")


class Processes:
    """Started process groups with their logs; everything still running is killed at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.started: dict[str, subprocess.Popen] = {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [STAMEN, *args],
            cwd=self.folder,
            env=flower_environment(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.started[name] = process
        return process

    def server(self, name: str, port: int, *args: str, work_dir: str = "") -> subprocess.Popen:
        return self.start(name, "server", "start", "--certs", "certs", "--port", str(port),
                          "--work-dir", work_dir or f"work-{name}", *args)

    def device(self, name: str, port: int, data: Path, *args: str, operator: str = "certs") -> subprocess.Popen:
        """A device that trusts the operator key in ``operator``/operator.pub (the server signs with certs/)."""
        return self.start(name, "client", "join", "--server", f"127.0.0.1:{port}", "--data", str(data),
                          "--key", f"certs/nodes/{name}.key", "--ca", "certs/ca.crt", "--state-dir", f"state-{name}",
                          "--operator-key", f"{operator}/operator.pub", *args)

    def run(self, *args: str) -> None:
        """A short ``stamen`` command, as a user types it in the deployment folder."""
        subprocess.run([STAMEN, *args], cwd=self.folder, env=flower_environment(), check=True, capture_output=True)

    def kill(self, name: str, number: signal.Signals = signal.SIGKILL) -> None:
        """Send ``number`` to the ``stamen`` command alone, as a user's ``kill`` would, and check that every
        process it started (Flower's, in sessions of their own too) is gone soon after."""
        process = self.started.pop(name)
        try:
            started = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            started = []
        try:
            process.send_signal(number)
            process.wait(timeout=60)
            wait_for(lambda: not any(map(alive, started)), 30,
                     f"{[p.name() for p in started if alive(p)]} started by {name} to stop")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # whatever a failure left in its group
            process.wait()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for name in list(self.started):
            self.kill(name)


def tiny_run_args(run_dir: Path, rounds: int, min_clients: int, *extra: str) -> list[str]:
    settings = ["base-model=tiny", "quantisation=none", "fraction-evaluate=0.0", f"min-clients={min_clients}",
                f"run-dir={run_dir}", "round-timeout=120", *extra]
    return ["--rounds", str(rounds), *(item for setting in settings for item in ("--set", setting))]


__all__ = ["Processes", "free_port", "tiny_run_args", "wait_for"]
