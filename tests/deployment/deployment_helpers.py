"""Real Stamen server and device processes on 127.0.0.1, as the README's deployment section starts them."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from stamen.shared.flower_tools import flower_environment, free_port

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

    def server(self, name: str, port: int, *args: str) -> subprocess.Popen:
        return self.start(name, "server", "start", "--certs", "certs", "--port", str(port),
                          "--work-dir", f"work-{name}", *args)

    def device(self, name: str, port: int, data: Path, *args: str, operator: str = "certs") -> subprocess.Popen:
        """A device that trusts the operator key in ``operator``/operator.pub (the server signs with certs/)."""
        return self.start(name, "client", "join", "--server", f"127.0.0.1:{port}", "--data", str(data),
                          "--key", f"certs/nodes/{name}.key", "--ca", "certs/ca.crt", "--state-dir", f"state-{name}",
                          "--operator-key", f"{operator}/operator.pub", *args)

    def run(self, *args: str) -> None:
        """A short ``stamen`` command, as a user types it in the deployment folder."""
        subprocess.run([STAMEN, *args], cwd=self.folder, env=flower_environment(), check=True, capture_output=True)

    def kill(self, name: str) -> None:
        """SIGKILL the whole process group: the CLI, Flower's process and the app it runs."""
        process = self.started.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def close(self) -> None:
        for name in list(self.started):
            self.kill(name)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def tiny_run_args(run_dir: Path, rounds: int, min_clients: int, *extra: str) -> list[str]:
    settings = ["base-model=tiny", "quantisation=none", "fraction-evaluate=0.0", f"min-clients={min_clients}",
                f"run-dir={run_dir}", "round-timeout=120", *extra]
    return ["--rounds", str(rounds), *(item for setting in settings for item in ("--set", setting))]


__all__ = ["Processes", "free_port", "tiny_run_args", "wait_for"]
