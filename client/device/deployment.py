"""A device joining a Stamen deployment: Flower's SuperNode with TLS, the device's key, and its data.

The SuperNode runs Stamen's ClientApp for every message, which hands it to the device's
:mod:`worker <stamen.client.device.worker>` (the base stays loaded); the node config tells the
app where the device's private data and personal state are, and which limits the
device sets (see :mod:`stamen.client.device.resource_guard`).
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stamen.shared.atomic import atomic_write_text
from stamen.shared.device_data import read_examples
from stamen.shared.flower_tools import flower_environment, flower_tool, free_port
from stamen.shared.process_guard import stop_tree
from stamen.shared.user_errors import UserError

from ..secagg_checks import DEFAULT_MIN_THRESHOLD, IDENTITY_KEY, MIN_NEIGHBOURS_KEY, MIN_THRESHOLD_KEY
from .release_ledger import MAX_EPSILON_KEY
from .resource_guard import ResourceGuards
from .signed_app import OPERATOR_KEY
from .supernode_output import REFUSALS, SuperNodeOutput
from .worker import WORKER_KEY_FILE, start_worker, worker_environment

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceSetup:
    server: str  # the SuperLink's host:port
    ca_certificate: Path
    node_key: Path
    data: Path
    state_dir: Path
    name: str
    guards: ResourceGuards = field(default_factory=ResourceGuards)
    base: str | None = None  # the device's own copy of the base (default: the run's base-model)
    secagg_min_threshold: float = DEFAULT_MIN_THRESHOLD  # the device's own least share threshold
    operator_key: Path | None = None  # the operator's public key: the device runs only runs it signed
    secagg_min_neighbours: int = 1  # the fewest neighbours the device shares its secrets among
    max_epsilon: float | None = None  # the device's own privacy budget (distributed DP only)


def supernode_command(device: DeviceSetup, port: int | None = None) -> list[str]:
    """``flower-supernode`` for this device; ``port`` is its local ClientApp API (a free one by default)."""
    read_examples(device.data)  # fail here, with the file's problem, rather than inside a round
    node_config = {"data-path": str(device.data.resolve()), "state-dir": str(device.state_dir.resolve()),
                   "client-name": device.name, MIN_THRESHOLD_KEY: device.secagg_min_threshold,
                   MIN_NEIGHBOURS_KEY: device.secagg_min_neighbours, IDENTITY_KEY: str(device.node_key.resolve())}
    limits = {"max-local-steps": device.guards.max_local_steps, "max-round-seconds": device.guards.max_round_seconds,
              "max-memory-mb": device.guards.max_memory_mb}
    node_config.update({key: value for key, value in limits.items() if value is not None})
    if device.base:
        node_config["base-model"] = device.base
    if device.operator_key:
        node_config[OPERATOR_KEY] = str(device.operator_key.resolve())
    if device.max_epsilon is not None:
        node_config[MAX_EPSILON_KEY] = device.max_epsilon
    return [
        flower_tool("flower-supernode"),
        "--superlink", device.server,
        "--root-certificates", str(device.ca_certificate),
        "--auth-supernode-private-key", str(device.node_key),
        "--node-config", " ".join(f"{key}={_toml(value)}" for key, value in node_config.items()),
        "--port", str(port or free_port()),
    ]


def join(device: DeviceSetup, port: int | None = None, worker_port: int | None = None) -> subprocess.Popen:
    """Start this device's SuperNode (its ClientApp forwarding to the worker on ``worker_port``, when given);
    its combined output on ``stdout``, for :class:`~stamen.client.device.supernode_output.SuperNodeOutput`."""
    device.state_dir.mkdir(parents=True, exist_ok=True)
    environment = guarded_environment(device.state_dir)
    if worker_port is not None:
        environment = worker_environment(environment, device.state_dir, worker_port)
    return subprocess.Popen(supernode_command(device, port), env=environment, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def guarded_environment(state_dir: Path) -> dict[str, str]:
    """The SuperNode's environment, with :mod:`stamen.client.device.signed_app` first on PATH as
    ``flwr-clientapp``: Flower starts the process that runs each message by that name, and Stamen's checks the app
    bundle first."""
    shims = state_dir / "bin"
    shims.mkdir(parents=True, exist_ok=True)
    shim = shims / "flwr-clientapp"
    atomic_write_text(shim, f'#!/bin/sh\nexec "{sys.executable}" -m stamen.client.device.signed_app "$@"\n')
    shim.chmod(0o755)
    environment = flower_environment(FLWR_HOME=str((state_dir / "flwr-home").resolve()))  # apps stay in the state dir
    environment["PATH"] = f"{shims}{os.pathsep}{environment['PATH']}"
    return environment


def stay_joined(device: DeviceSetup, wait_for_server: float = 600.0, poll_seconds: float = 5.0,
                verbose: bool = False) -> None:
    """Run this device's worker (the base loaded once) and SuperNode until interrupted, joining again whenever
    the SuperNode exits (Flower's gives up when the server is down for long or restarts before
    re-registering the device); leave once the server has not answered for ``wait_for_server`` s. A server that
    never answered is an error (:class:`ServerNeverAnswered`), and so is one that turned the device away
    ``REFUSALS_BEFORE_LEAVING`` times in a row (:class:`DeviceRefused`). ``verbose``: all of Flower's lines, and a
    line for every message the device answers."""
    device.state_dir.mkdir(parents=True, exist_ok=True)
    port, worker_port = free_port(), free_port()
    worker = start_worker(device.state_dir, worker_port, flower_environment(), verbose)
    server = ServerWatch(device.server, wait_for_server)
    node = SuperNodeRunner(device, port, worker_port, verbose)
    try:
        while (answering := server.answers()) or not server.gone():
            if worker.poll() is not None:
                log.warning("the device worker exited with code %s; starting it again", worker.returncode)
                worker = start_worker(device.state_dir, worker_port, flower_environment(), verbose)
            node.keep_running(answering)
            time.sleep(poll_seconds)
        if not server.ever_answered:
            raise ServerNeverAnswered(f"no server answered at {device.server} in {wait_for_server:.0f} s: check "
                                      "--server, and that `stamen server start` runs there")
        log.info("the server at %s has not answered for %.0f s (the run ended?): leaving", device.server,
                 wait_for_server)
    except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM/SIGHUP (see stamen.shared.process_guard)
        pass
    finally:
        node.stop()
        stop_tree(worker.pid)
        worker.wait()
        (device.state_dir / WORKER_KEY_FILE).unlink(missing_ok=True)  # a key for a worker that no longer runs


class DeviceRefused(UserError):
    """The server turned this device away (its CA or its key) ``REFUSALS_BEFORE_LEAVING`` times in a row: no retry
    can succeed. A single refusal can be a restarted server that has not registered the devices' keys yet."""


REFUSALS_BEFORE_LEAVING = 3


class SuperNodeRunner:
    """This device's SuperNode: started while the server answers, started again when it exits, its output shown
    through :class:`SuperNodeOutput`."""

    def __init__(self, device: DeviceSetup, port: int, worker_port: int, verbose: bool) -> None:
        self.device, self.port, self.worker_port, self.verbose = device, port, worker_port, verbose
        self.process: subprocess.Popen | None = None
        self.output: SuperNodeOutput | None = None
        self.refused_in_a_row = 0

    def keep_running(self, answering: bool) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        if self.process is not None:
            self._ended()
        self.process = join(self.device, self.port, self.worker_port) if answering else None
        if self.process is not None:
            self.output = SuperNodeOutput(self.process.stdout, self.verbose, lambda line: print(line, flush=True))

    def _ended(self) -> None:
        refusal = self.output.finish()
        self.refused_in_a_row = self.refused_in_a_row + 1 if refusal else 0
        if self.refused_in_a_row >= REFUSALS_BEFORE_LEAVING:
            raise DeviceRefused(REFUSALS[refusal].format(ca=self.device.ca_certificate, key=self.device.node_key))
        if refusal:
            log.info("the server turned this device away (%s); trying again", refusal)
        else:
            log.info("the SuperNode exited with code %s; joining again", self.process.returncode)

    def stop(self) -> None:
        if self.process is not None:
            self.output.mute()
            stop_tree(self.process.pid)
            self.process.wait()


class ServerNeverAnswered(UserError):
    """The device waited its ``--wait-for-server`` and no server ever answered at the address it was given."""


class ServerAddressError(UserError, ValueError):
    """A ``--server`` that is not HOST:PORT."""


def check_server_address(address: str) -> str:
    """``address`` as HOST:PORT with a port in 1-65535, or a :class:`ServerAddressError`."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ServerAddressError(f"--server {address!r} is not HOST:PORT (e.g. 127.0.0.1:9091, the server's "
                                 "--host and --port)")
    return address


class ServerWatch:
    """Whether the server answers (one probe per :meth:`answers`), whether it has been silent for longer than
    ``patience`` seconds since, and whether it ever answered."""

    def __init__(self, address: str, patience: float) -> None:
        host, port = address.rsplit(":", 1)
        self.address, self.patience = (host, int(port)), patience
        self.silent_since: float | None = None
        self.ever_answered = False

    def answers(self) -> bool:
        try:
            with socket.create_connection(self.address, timeout=2.0):
                self.silent_since = None
                self.ever_answered = True
                return True
        except OSError:
            if self.silent_since is None:
                log.info("the server at %s:%s does not answer; waiting up to %.0f s", *self.address, self.patience)
                self.silent_since = time.monotonic()
            return False

    def gone(self) -> bool:
        """Silent for longer than ``patience`` at the last :meth:`answers`."""
        return self.silent_since is not None and time.monotonic() - self.silent_since > self.patience


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
