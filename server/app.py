"""The Stamen ServerApp entry points.

``app`` is what ``flwr run`` starts (its config comes from the run config);
``server_app_for`` builds the same app around a config object for simulations.
"""

from __future__ import annotations

import logging
import math
import time
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


class WaitingLinesThinned(logging.Filter):
    """Flower logs "Waiting for nodes to connect" every second while a round waits for devices; pass it
    when the count changes or every ``interval`` seconds."""

    def __init__(self, interval: float = 30.0) -> None:
        super().__init__()
        self.interval, self.last, self.last_args = interval, -math.inf, None

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Waiting for nodes to connect"):
            return True
        now = time.monotonic()
        if record.args == self.last_args and now - self.last < self.interval:
            return False
        self.last, self.last_args = now, record.args
        return True


def _log_through_flower() -> None:
    """Send Stamen's round log lines through Flower's handlers, which ``flwr run --stream`` shows, and thin
    Flower's waiting lines. Flower's lines stop at Flower's handlers: a library that configures the root logger
    on import (Opacus does) would print each of them a second time."""
    flwr_logger = logging.getLogger("flwr")
    flwr_logger.addFilter(WaitingLinesThinned())
    flwr_logger.propagate = False
    stamen_logger = logging.getLogger("stamen")
    stamen_logger.setLevel(logging.INFO)
    for handler in flwr_logger.handlers:
        if handler not in stamen_logger.handlers:
            stamen_logger.addHandler(handler)
    stamen_logger.propagate = False
