"""Every process a Stamen command starts dies with it, however the command ends.

Flower's SuperLink and SuperNode start helpers in sessions of their own (the SuperExec, then a
ServerApp per run or a ClientApp per message), so neither a Ctrl-C to the terminal's process group
nor the command's own clean-up reaches all of them, and SIGKILL runs no clean-up at all. So a
command that starts processes calls :func:`guard`:

- SIGTERM and SIGHUP become :class:`SystemExit` (SIGINT is already KeyboardInterrupt), so the
  command's ``finally`` blocks stop what it started;
- a guard process (``python -m stamen.shared.process_guard``) records the command's descendants
  (pid and start time) in ``<folder>/processes.json`` every half second; once the command is gone,
  SIGKILL included, it terminates every recorded process still alive and kills what is left after
  a grace period;
- a new command on the same folder first stops what a predecessor left there (its guard killed too),
  and refuses to start while that predecessor still runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

from .atomic import atomic_write_text
from .user_errors import UserError

log = logging.getLogger(__name__)
RECORD = "processes.json"
POLL_SECONDS = 0.5
GRACE_SECONDS = 5.0


class FolderInUse(UserError, RuntimeError):
    """Another live Stamen command owns this folder."""


_guards: dict[int, subprocess.Popen] = {}  # this process's guard, by pid (a forked child needs its own)


def guard(folder: Path) -> None:
    """Stop leftovers of an earlier command on ``folder``, turn termination signals into exits, and start
    the guard process that outlives this one (once per process: it watches every descendant)."""
    folder.mkdir(parents=True, exist_ok=True)
    stop_leftovers(folder)
    if os.getpid() in _guards:
        return
    for number in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(number, _exit_on_signal)
    _guards[os.getpid()] = subprocess.Popen(
        [sys.executable, "-m", __name__, str(os.getpid()), str(folder / RECORD)], start_new_session=True,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def exit_at_once_on_signals(before_exit: Callable[[], None]) -> Iterator[None]:
    """Inside this block SIGINT, SIGTERM and SIGHUP stop every child process, run ``before_exit`` and end
    this process at once: for work that runs in a thread no interrupt reaches (Flower's simulation runs
    its ServerApp in one and waits for it to finish its round). State is safe: checkpoints are atomic."""

    def stop_now(number: int, frame: object) -> None:
        own_guard = _guards.get(os.getpid())
        for child in psutil.Process().children():
            if own_guard is None or child.pid != own_guard.pid:
                stop_tree(child.pid, grace=2.0)
        before_exit()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + number)

    numbers = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {number: signal.signal(number, stop_now) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


@contextlib.contextmanager
def stopping_started_processes() -> Iterator[None]:
    """However the block ends early (a signal's SystemExit, Ctrl-C, an error), the processes started in it stop
    before the exception leaves it: a command that waits on them (threads included) ends instead of hanging."""
    try:
        yield
    except BaseException:
        stop_started_processes()
        raise


def stop_started_processes() -> None:
    """Stop what this process started, except its guard: the direct children first (a Stamen command stops what
    it started itself), then whatever they leave."""
    guard_process = _guards.get(os.getpid())
    mine = [p for p in _descendants(psutil.Process()) if guard_process is None or p.pid != guard_process.pid]
    stop_all([p for p in mine if p.info["ppid"] == os.getpid()])  # the scan's ppid: no call on a process now gone
    stop_all([p for p in mine if alive(p)])


def stop_tree(pid: int, grace: float = GRACE_SECONDS) -> None:
    """Stop a process and every process under it, those in sessions of their own included."""
    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    stop_all([root, *_descendants(root)], grace)


def stop_leftovers(folder: Path) -> int:
    """Stop the processes an earlier command on ``folder`` left running; returns how many there were."""
    record = _read(folder / RECORD)
    if not record:
        return 0
    owner = _same_process(record.get("owner"))
    if owner is not None and owner.pid != os.getpid():
        raise FolderInUse(f"{folder} is in use by a running Stamen command (pid {owner.pid}); stop it first")
    entries = [record.get("guard"), *record.get("processes", [])]
    leftovers = [process for process in map(_same_process, entries) if process]
    if leftovers:
        log.warning("stopping %d processes an earlier command on %s left running: %s", len(leftovers), folder,
                    ", ".join(f"{p.pid} ({_name(p)})" for p in leftovers))
        stop_all(leftovers)
    (folder / RECORD).unlink(missing_ok=True)
    return len(leftovers)


def stop_all(processes: list[psutil.Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM, then SIGKILL for what is still alive after ``grace`` seconds."""
    for process in processes:
        with contextlib.suppress(psutil.Error):  # gone already; psutil refuses a pid now naming another process
            process.terminate()
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(map(alive, processes)):
        time.sleep(0.1)
    for process in filter(alive, processes):
        with contextlib.suppress(psutil.Error):
            process.kill()


def alive(process: psutil.Process) -> bool:
    """Still running: not gone, and not a zombie waiting for its parent to collect it."""
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def watch(owner_pid: int, record: Path) -> None:
    """The guard's loop: follow the owner's descendants until the owner is gone, then stop them."""
    me = psutil.Process()
    try:
        owner = psutil.Process(owner_pid)
    except psutil.NoSuchProcess:
        return
    seen: dict[int, psutil.Process] = {}
    while alive(owner):
        found = _descendants(owner, *seen.values())
        new = {p.pid: p for p in found if p.pid != me.pid and p.pid not in seen}
        if new:
            seen.update(new)
            _write(record, owner, me, list(seen.values()))
        time.sleep(POLL_SECONDS)
    stop_all([p for p in seen.values() if alive(p)])
    record.unlink(missing_ok=True)


def _descendants(*roots: psutil.Process) -> list[psutil.Process]:
    """Every live process under any of ``roots``, from one scan of the process table (the guard asks twice a
    second about every process it has seen: a scan per process cost it a tenth of a core)."""
    children: dict[int, list[psutil.Process]] = {}
    for process in psutil.process_iter(["ppid"]):
        children.setdefault(process.info["ppid"], []).append(process)
    found: dict[int, psutil.Process] = {}
    pending = [root.pid for root in roots]
    while pending:
        for child in children.get(pending.pop(), []):
            if child.pid not in found:
                found[child.pid] = child
                pending.append(child.pid)
    return list(found.values())


def _write(path: Path, owner: psutil.Process, guard_process: psutil.Process, processes: list[psutil.Process]) -> None:
    entries = [_entry(p) for p in processes]
    with contextlib.suppress(OSError):  # the folder went away (a run that failed before round 1): guard from memory
        atomic_write_text(path, json.dumps({"owner": _entry(owner), "guard": _entry(guard_process),
                                            "processes": [e for e in entries if e]}))


def _entry(process: psutil.Process) -> list[float] | None:
    try:
        return [process.pid, process.create_time()]
    except psutil.Error:
        return None


def _same_process(entry: list[float] | None) -> psutil.Process | None:
    """The process ``entry`` recorded, if it still runs (a reused pid has another start time)."""
    if not entry:
        return None
    try:
        process = psutil.Process(int(entry[0]))
        return process if abs(process.create_time() - float(entry[1])) < 0.01 else None
    except psutil.Error:
        return None


def _read(path: Path) -> dict | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def _name(process: psutil.Process) -> str:
    try:
        return process.name()
    except psutil.Error:
        return "?"


def _exit_on_signal(number: int, frame: object) -> None:
    raise SystemExit(128 + number)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the command; the guard cleans up after it
    watch(int(sys.argv[1]), Path(sys.argv[2]))
