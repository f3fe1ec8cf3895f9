"""Flower's own programs (flower-superlink, flower-supernode, flwr) run from this Python environment."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path


def flower_tool(name: str) -> str:
    """The path of one of Flower's console scripts installed beside this interpreter."""
    return str(Path(sys.executable).parent / name)


def flower_environment(**extra: str) -> dict[str, str]:
    """Environment for Flower's processes: they start helpers (flower-superexec, flwr-serverapp) by name,
    so this environment's scripts come first on PATH; no telemetry, no app installs at run time."""
    return {
        **os.environ,
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        **extra,
    }


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
