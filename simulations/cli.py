"""The ``stamen`` command line: each room's commands, assembled under one root.

A :class:`~stamen.shared.user_errors.UserError` and a usage error (a flag that does not exist, a value out of its
range, a file that is not there) end a command with one line naming what to fix, exit status 2 (``--debug`` adds
the traceback of a user error); a traceback never lists local variables, which on a device may hold private data.
"""

from __future__ import annotations

import sys
from typing import Annotated

import click
import typer
from rich.markup import escape

from stamen.client.commands import chat, client_commands
from stamen.server.commands import RUN_FINISHERS, export, server_commands
from stamen.shared.commands import certs, console, info, keys
from stamen.shared.user_errors import UserError
from stamen.simulations.commands import compare, example_data, report, report_written, simulate, sweep

USER_ERROR_EXIT = 2  # as a usage error
app = typer.Typer(help="Stamen: federated personalisation of quantised language models.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)
for command in (simulate, report, compare, info, export, sweep, certs, chat, keys):
    app.command()(command)
app.command("example-data")(example_data)
app.add_typer(server_commands, name="server")
RUN_FINISHERS.append(report_written)  # a deployment run writes report.md and its plots, as a simulation does
app.add_typer(client_commands, name="client")
_debug = False


@app.callback()
def root(debug: Annotated[bool, typer.Option("--debug", help="Show the traceback of an error too.")] = False) -> None:
    """Stamen: federated personalisation of quantised language models."""
    global _debug
    _debug = debug


def main() -> None:
    try:
        status = app(prog_name="stamen", standalone_mode=False)  # usage errors come here instead of Typer's boxed panel
    except click.exceptions.NoArgsIsHelpError:
        sys.exit(USER_ERROR_EXIT)  # the help is printed already
    except click.UsageError as error:
        hint = f" (`{error.ctx.command_path} --help`)" if error.ctx is not None else ""
        _fail(error.format_message() + hint)
    except click.ClickException as error:
        _fail(error.format_message())
    except click.Abort:
        sys.exit(1)
    except UserError as error:
        if _debug:
            raise
        _fail(str(error))
    sys.exit(status if isinstance(status, int) else 0)  # --help and Ctrl-C (130) end with the status they set


def _fail(message: str) -> None:
    console.print(f"[red]error:[/] {escape(message)}", markup=True, highlight=False, soft_wrap=True)
    sys.exit(USER_ERROR_EXIT)
