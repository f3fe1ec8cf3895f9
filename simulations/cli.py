"""The ``stamen`` command line: each room's commands, assembled under one root."""

from __future__ import annotations

import typer

from stamen.client.commands import client_commands
from stamen.server.commands import export, server_commands
from stamen.shared.commands import certs, info
from stamen.simulations.commands import compare, example_data, report, simulate, sweep

app = typer.Typer(help="Stamen: federated personalisation of quantised language models.", no_args_is_help=True)
for command in (simulate, report, compare, info, export, sweep, certs):
    app.command()(command)
app.command("example-data")(example_data)
app.add_typer(server_commands, name="server")
app.add_typer(client_commands, name="client")


def main() -> None:
    app()
