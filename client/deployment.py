"""A device joining a Stamen deployment: Flower's SuperNode with TLS, the device's key, and its data.

The SuperNode runs Stamen's ClientApp for every message; the node config tells the
app where the device's private data and personal state are, and which limits the
device sets (see :mod:`stamen.client.resource_guard`).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from stamen.shared.atomic import atomic_write_text
from stamen.shared.device_data import read_examples
from stamen.shared.flower_tools import flower_environment, flower_tool, free_port

from .resource_guard import ResourceGuards
from .secure_aggregation import DEFAULT_MIN_THRESHOLD
from .secure_aggregation_mod import MIN_THRESHOLD_KEY
from .trust import OPERATOR_KEY

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


def supernode_command(device: DeviceSetup, port: int | None = None) -> list[str]:
    """``flower-supernode`` for this device; ``port`` is its local ClientApp API (a free one by default)."""
    read_examples(device.data)  # fail here, with the file's problem, rather than inside a round
    node_config = {"data-path": str(device.data.resolve()), "state-dir": str(device.state_dir.resolve()),
                   "client-name": device.name, MIN_THRESHOLD_KEY: device.secagg_min_threshold}
    limits = {"max-local-steps": device.guards.max_local_steps, "max-round-seconds": device.guards.max_round_seconds,
              "max-memory-mb": device.guards.max_memory_mb}
    node_config.update({key: value for key, value in limits.items() if value is not None})
    if device.base:
        node_config["base-model"] = device.base
    if device.operator_key:
        node_config[OPERATOR_KEY] = str(device.operator_key.resolve())
    return [
        flower_tool("flower-supernode"),
        "--superlink", device.server,
        "--root-certificates", str(device.ca_certificate),
        "--auth-supernode-private-key", str(device.node_key),
        "--node-config", " ".join(f"{key}={_toml(value)}" for key, value in node_config.items()),
        "--port", str(port or free_port()),
    ]


def join(device: DeviceSetup, port: int | None = None) -> subprocess.Popen:
    """Start this device's SuperNode; its output goes to this process's."""
    device.state_dir.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(supernode_command(device, port), env=guarded_environment(device.state_dir))


def guarded_environment(state_dir: Path) -> dict[str, str]:
    """The SuperNode's environment, with :mod:`stamen.client.trust` first on PATH as ``flwr-clientapp``: Flower
    starts the process that runs each message by that name, and Stamen's checks the app bundle first."""
    shims = state_dir / "bin"
    shims.mkdir(parents=True, exist_ok=True)
    shim = shims / "flwr-clientapp"
    atomic_write_text(shim, f'#!/bin/sh\nexec "{sys.executable}" -m stamen.client.trust "$@"\n')
    shim.chmod(0o755)
    environment = flower_environment()
    environment["PATH"] = f"{shims}{os.pathsep}{environment['PATH']}"
    return environment


def stay_joined(device: DeviceSetup, retry_seconds: float = 5.0) -> None:
    """Run this device's SuperNode until interrupted, starting it again whenever it exits: Flower's SuperNode
    gives up when the server is down for long or restarts before re-registering the device."""
    port = free_port()
    while True:
        process = join(device, port)
        try:
            code = process.wait()
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            return
        log.warning("the SuperNode exited with code %s; joining %s again in %.0f s", code, device.server, retry_seconds)
        time.sleep(retry_seconds)


def _toml(value: object) -> str:
    return f'"{value}"' if isinstance(value, str) else str(value)
