"""The Stamen ServerApp entry points.

``app`` is what ``flwr run`` starts (its config comes from the run config);
``server_app_for`` builds the same app around a config object for simulations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.shared.config import RunConfig

from .extensions import ServerExtension
from .federation import run_federation


def server_app_for(config: RunConfig, resume: bool = False, extensions: Sequence[ServerExtension] = ()) -> ServerApp:
    """A ServerApp bound to ``config`` (the simulation path, where there is no run config),
    with ``extensions`` installed beside the ones the config asks for."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, resume, extensions)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: the run config is the flat Stamen config."""
    _log_through_flower()
    config = RunConfig.from_flat(context.run_config)
    run_federation(grid, config, resume=config.resume)


def _log_through_flower() -> None:
    """Send Stamen's round log lines through Flower's handlers, which ``flwr run --stream`` shows."""
    stamen_logger = logging.getLogger("stamen")
    stamen_logger.setLevel(logging.INFO)
    for handler in logging.getLogger("flwr").handlers:
        if handler not in stamen_logger.handlers:
            stamen_logger.addHandler(handler)
    stamen_logger.propagate = False
