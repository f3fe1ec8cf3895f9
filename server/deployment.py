"""A Stamen server for real devices: Flower's SuperLink with TLS and SuperNode authentication,
the devices' keys registered with Flower's CLI, and the Stamen run submitted to it with ``flwr run``.

The SuperLink listens on loopback only: its Control API starts runs and registers keys for
anyone who reaches it. Devices reach the :mod:`Fleet gateway <stamen.server.fleet_gateway>`
on the advertised host and port instead, which forwards the Fleet API and nothing else; the
operator's Flower CLI talks to the SuperLink on loopback. Everything else drives Flower's own
processes and CLI (``flower-superlink``, ``flwr supernode register``, ``flwr run``).
"""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from stamen.shared.atomic import atomic_write_text
from stamen.shared.config import RunConfig
from stamen.shared.flower_tools import flower_environment, flower_tool
from stamen.shared.process_guard import stop_tree
from stamen.shared.run_folder import RunFolder
from stamen.shared.user_errors import UserError

from .fleet_gateway import FleetGateway, registered_key

log = logging.getLogger(__name__)
CONNECTION = "stamen"  # the SuperLink connection's name in Flower's CLI configuration
LOOPBACK = "127.0.0.1"


class DeploymentError(UserError, RuntimeError):
    """A Flower process or CLI call failed; the message carries its output."""


def require_free_port(host: str, port: int) -> None:
    """Refuse, naming the port, a ``--port`` another process listens on, before anything is started."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise DeploymentError(f"--port {port} on {host} is not free ({error.strerror}): stop what holds it, or "
                                  "choose another --port") from None


@dataclass(frozen=True)
class TlsFiles:
    ca_certificate: Path
    server_certificate: Path
    server_key: Path


@dataclass(frozen=True)
class ServerDeployment:
    tls: TlsFiles
    host: str  # where devices reach the Fleet gateway ("0.0.0.0" for other machines)
    port: int
    work_dir: Path  # Flower's CLI home, the generated Flower app, the SuperLink log
    superlink_port: int  # the SuperLink's own port, on loopback only

    @property
    def reachable_address(self) -> str:
        """Where a device on this machine reaches the gateway."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"{host}:{self.port}"

    @property
    def superlink_address(self) -> str:
        """The SuperLink with its Control API: reachable from this machine only."""
        return f"{LOOPBACK}:{self.superlink_port}"

    @property
    def flower_home(self) -> Path:
        return self.work_dir / "flwr-home"

    def environment(self) -> dict[str, str]:
        return flower_environment(FLWR_HOME=str(self.flower_home))


def start_superlink(deployment: ServerDeployment) -> subprocess.Popen:
    """Start ``flower-superlink`` on loopback with TLS and SuperNode authentication; return once it accepts
    connections."""
    deployment.work_dir.mkdir(parents=True, exist_ok=True)
    command = [
        flower_tool("flower-superlink"),
        "--ssl-ca-certfile", str(deployment.tls.ca_certificate),
        "--ssl-certfile", str(deployment.tls.server_certificate),
        "--ssl-keyfile", str(deployment.tls.server_key),
        "--enable-supernode-auth",
        "--disable-runtime-dependency-installation",
        "--host", LOOPBACK,
        "--port", str(deployment.superlink_port),
    ]
    log_path = deployment.work_dir / "superlink.log"
    process = subprocess.Popen(command, env=deployment.environment(), stdout=log_path.open("ab"),
                               stderr=subprocess.STDOUT)
    wait_for_port(deployment.superlink_address, process, log_path)
    log.info("SuperLink listening on %s (TLS, SuperNode authentication on); log: %s", deployment.superlink_address,
             log_path)
    return process


def start_gateway(deployment: ServerDeployment, node_keys: list[Path]) -> FleetGateway:
    """The devices' door: the Fleet API of the SuperLink on ``host:port``, with the server's certificate, for calls
    signed by one of ``node_keys`` (the devices' public keys)."""
    gateway = FleetGateway(deployment.host, deployment.port, f"https://{deployment.superlink_address}",
                           deployment.tls.server_certificate, deployment.tls.server_key, deployment.tls.ca_certificate,
                           [registered_key(path) for path in node_keys])
    try:
        gateway.start()
    except RuntimeError as error:
        raise DeploymentError(str(error)) from None
    return gateway


def wait_for_port(address: str, process: subprocess.Popen, log_path: Path, timeout: float = 60.0) -> None:
    host, port = address.rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise DeploymentError(f"the SuperLink exited with code {process.returncode}:\n{_tail(log_path)}")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.3)
    raise DeploymentError(f"the SuperLink did not open {address} within {timeout:.0f} s:\n{_tail(log_path)}")


def write_connection(deployment: ServerDeployment) -> None:
    """Flower's CLI configuration: one connection to this SuperLink, verified against the CA."""
    text = (f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{deployment.superlink_address}"\n'
            f'root-certificates = "{deployment.tls.ca_certificate.resolve()}"\n')
    atomic_write_text(deployment.flower_home / "config.toml", text)


def register_nodes(deployment: ServerDeployment, public_keys: list[Path]) -> None:
    """Allow exactly these devices' keys to connect (``flwr supernode register``)."""
    for key in public_keys:
        result = subprocess.run([flower_tool("flwr"), "supernode", "register", str(key), CONNECTION],
                                env=deployment.environment(), capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise DeploymentError(f"registering {key} failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
        log.info("registered device key %s", key.name)


STAMEN_SERVERAPP = "stamen.server.app:app"


def write_flower_app(folder: Path, config: RunConfig, serverapp: str = STAMEN_SERVERAPP) -> Path:
    """A Flower app folder whose run config is ``config``: what ``flwr run`` submits (``serverapp``: another
    ServerApp, installed on the server, for Stamen's devices; they run their own ClientApp whatever it names)."""
    lines = [
        "[project]", 'name = "stamen-federation"', 'version = "1.0.0"',
        'description = "A Stamen federation run"', 'license = "Apache-2.0"', "",
        "[tool.flwr.app]", 'publisher = "stamen"', "",
        "[tool.flwr.app.components]", f'serverapp = "{serverapp}"', 'clientapp = "stamen.client.app:app"', "",
        "[tool.flwr.app.config]",
        *(f"{key} = {json.dumps(value)}" for key, value in config.to_flat().items()),
    ]
    atomic_write_text(folder / "pyproject.toml", "\n".join(lines) + "\n")
    return folder


def run_federation_on(deployment: ServerDeployment, config: RunConfig, serverapp: str = STAMEN_SERVERAPP) -> Path:
    """Submit ``config`` to the running SuperLink, stream its logs, and return the run folder."""
    app_folder = write_flower_app(deployment.work_dir / "app", config, serverapp)
    result = subprocess.run([flower_tool("flwr"), "run", str(app_folder), CONNECTION, "--stream"],
                            env=deployment.environment(), cwd=deployment.work_dir)
    folder = RunFolder.of(config)
    if result.returncode != 0 or not folder.finished():
        raise DeploymentError(f"the run did not finish (flwr run exited with {result.returncode}); see {folder.path}")
    return folder.path


def resumed_config(run_dir: Path) -> RunConfig:
    """The configuration of ``run_dir``, set to continue from its last completed round."""
    return RunFolder(run_dir).run_config().replace(
        **{"run-dir": str(run_dir.parent.resolve()), "run-id": run_dir.name, "resume": True})


def stop(process: subprocess.Popen) -> None:
    """Stop a Flower process and everything it started (its SuperExec and ServerApp run in sessions of their own)."""
    stop_tree(process.pid)
    process.wait()


def _tail(path: Path, lines: int = 30) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.is_file() else ""
