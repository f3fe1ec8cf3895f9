"""Processes a Stamen command starts stop with it: SIGKILL, SIGTERM, and leftovers a restart finds."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from stamen.shared.process_guard import RECORD, FolderInUse, alive, stop_leftovers

# a command like `stamen server start`: guarded, a child that starts a helper in a session of its own (as
# flower-superlink starts flower-superexec), and a finally block that stops what it started
COMMAND = """
import subprocess, sys, time
from pathlib import Path
from stamen.shared.process_guard import guard, stop_tree
folder = Path(sys.argv[1])
guard(folder)
helper = ("import subprocess, sys, time; "
          "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
          "time.sleep(600)")
child = subprocess.Popen([sys.executable, "-c", helper])
try:
    time.sleep(600)
finally:
    (folder / "cleaned-up").write_text("yes")
    stop_tree(child.pid)
"""


def _start(folder: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """The command, once its guard has recorded the child and the child's helper."""
    command = subprocess.Popen([sys.executable, "-c", COMMAND, str(folder)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        record = json.loads((folder / RECORD).read_text()) if (folder / RECORD).is_file() else {}
        if len(record.get("processes", [])) >= 2:  # the child and the helper it started
            return command, psutil.Process(command.pid).children(recursive=True)
        time.sleep(0.2)
    command.kill()
    raise AssertionError("the guard never recorded the command's processes")


def _gone_within(processes: list[psutil.Process], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while any(map(alive, processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not any(map(alive, processes))


@pytest.mark.parametrize("number", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_every_process_a_command_started_stops_with_it(tmp_path, number):
    command, started = _start(tmp_path)
    assert len(started) >= 3  # the guard, the child and its helper (in a session of its own)
    with pytest.raises(FolderInUse, match="in use by a running Stamen command"):
        stop_leftovers(tmp_path)  # a second command on the same folder is refused while the first runs
    command.send_signal(number)
    assert command.wait(timeout=30) == (-9 if number == signal.SIGKILL else 128 + number)
    assert (tmp_path / "cleaned-up").is_file() == (number == signal.SIGTERM)  # SIGTERM runs finally blocks
    assert _gone_within(started, 20), [p.name() for p in started if alive(p)]
    assert not (tmp_path / RECORD).exists()


def test_a_restart_stops_what_a_killed_command_and_its_killed_guard_left(tmp_path):
    command, started = _start(tmp_path)
    guard_pid = json.loads((tmp_path / RECORD).read_text())["guard"][0]
    psutil.Process(guard_pid).kill()  # both killed at once: nobody is left to clean up
    command.kill()
    command.wait()
    time.sleep(1)
    left = [p for p in started if alive(p)]
    assert left  # the helper in its own session outlived both
    assert stop_leftovers(tmp_path) >= len(left)
    assert _gone_within(left, 10) and not (tmp_path / RECORD).exists()
