"""Run a whole federation on one machine with Flower's simulation engine.

``run_simulation`` is deprecated upstream in favour of ``flwr run``; it is used
here, behind this one function, so the engine can be switched in one place.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from stamen.shared.base_model import pick_device
from stamen.shared.base_source import resolve_base_folder
from stamen.shared.config import RunConfig
from stamen.shared.fingerprint import base_fingerprint
from stamen.shared.quantisation import QuantisationChoice, choose_quantisation
from stamen.shared.run_folder import RunFolder

if TYPE_CHECKING:
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp


@dataclass(frozen=True)
class Resources:
    """What each virtual client may use; Ray runs as many at once as fit."""

    cpus_per_client: int = 1
    gpus_per_client: float = 0.0


def prepare_base(config: RunConfig) -> QuantisationChoice:
    """Do the one-off work (GGUF dequantisation, the ``auto`` quality check) before clients start,
    so parallel client processes find it cached instead of racing to do it."""
    folder = resolve_base_folder(config.base_model)
    if config.quantisation != "auto":
        return QuantisationChoice(config.quantisation, f"{config.quantisation} requested")
    from stamen.shared.base_model import load_tokenizer

    return choose_quantisation(folder, base_fingerprint(folder), load_tokenizer(folder), pick_device())


def simulate(
    config: RunConfig,
    num_clients: int,
    resources: Resources = Resources(),
    resume: bool = False,
    client_app: ClientApp | None = None,
) -> Path:
    """Run ``config`` with ``num_clients`` virtual clients (``resume``: continue its run folder).

    ``client_app`` replaces the simulation's ClientApp, e.g. one built by
    :func:`stamen.simulations.client_app.simulated_client_app` to add Flower mods."""
    from stamen.server.app import server_app_for
    from stamen.simulations.attack_tally import AttackTally
    from stamen.simulations.client_app import app as simulated_client_app

    if not config.run_id:
        raise ValueError("simulate needs config.run_id so the run folder is known in advance")
    server_app = server_app_for(config, resume, [AttackTally()])
    run_apps(server_app, client_app or simulated_client_app, num_clients, resources)
    folder = RunFolder.of(config)
    if not folder.finished():
        raise RuntimeError(f"the simulation ended without finishing its run; see the log above and {folder.path}")
    return folder.path


def run_apps(
    server_app: ServerApp, client_app: ClientApp, num_clients: int, resources: Resources = Resources()
) -> None:
    """Run any ServerApp/ClientApp pair with ``num_clients`` virtual SuperNodes on this machine."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # keep Ray's GPU env as it is
    from flwr.simulation import run_simulation

    backend_config = {
        "client_resources": {"num_cpus": resources.cpus_per_client, "num_gpus": resources.gpus_per_client},
        "init_args": {"num_cpus": os.cpu_count() or 1, "log_to_driver": False},
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_clients,
                   backend_config=backend_config)
