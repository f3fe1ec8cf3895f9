"""The Stamen ServerApp entry points.

``app`` is what ``flwr run`` starts (its config comes from the run config);
``server_app_for`` builds the same app around a config object for simulations.
"""

from __future__ import annotations

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from stamen.shared.config import RunConfig

from .federation import run_federation


def server_app_for(config: RunConfig, resume: bool = False) -> ServerApp:
    """A ServerApp bound to ``config`` (the simulation path, where there is no run config)."""
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, config, resume)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point for ``flwr run``: the run config is the flat Stamen config."""
    run_federation(grid, RunConfig.from_flat(context.run_config))
