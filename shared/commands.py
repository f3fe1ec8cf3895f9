"""Commands and command-line helpers every room's commands use: the console, logging, a run config from the
command line, ``stamen info`` (a base as a client loads it), ``stamen certs`` (development certificates) and
``stamen keys`` (every configuration key)."""

from __future__ import annotations

import contextlib
import logging
import shutil
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from .config import ConfigError, RunConfig, parse_override
from .library_logs import LibraryWarningsOnce, quiet_progress_bars
from .run_folder import RunFolder

console = Console()


def configure_logging(verbose: bool) -> None:
    handler = RichHandler(console=console, show_path=False, markup=False)
    handler.addFilter(LibraryWarningsOnce())
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("stamen").setLevel(logging.DEBUG if verbose else logging.INFO)
    import flwr.common  # noqa: F401  -- installs Flower's own console handler, tuned below

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    for flwr_handler in flwr_logger.handlers:
        flwr_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("transformers", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.ERROR)
    if not verbose:
        quiet_progress_bars()


def end_stopped_run(folder: RunFolder, new_run: bool) -> None:
    """A new run stopped before its first round leaves no folder behind; any other says how to continue."""
    if folder.finished():
        return
    if new_run and not folder.checkpoint.is_file():
        console.print(f"No round completed: {folder.path} removed.")
        shutil.rmtree(folder.path, ignore_errors=True)
    else:
        console.print(f"Stopped; continue with the same command and --resume {folder.path}")


@contextlib.contextmanager
def ended_cleanly_when_stopped(folder: RunFolder, new_run: bool) -> Iterator[None]:
    """:func:`end_stopped_run` when the run raises or is stopped (SIGINT/SIGTERM arrive as exceptions)."""
    try:
        yield
    except BaseException:
        end_stopped_run(folder, new_run)
        raise


def read_toml(path: Path) -> dict:
    """A TOML file the user wrote; a syntax error names the file and the line."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path} is not valid TOML: {error}; fix that line and run again") from None


def load_config(preset: Path | None, overrides: list[str]) -> RunConfig:
    values: dict = {}
    if preset is not None:
        values.update(read_toml(preset))
    for item in overrides:
        key, value = parse_override(item)
        values[key] = value
    return RunConfig.from_flat({**RunConfig().to_flat(), **values})


def info(
    base: Annotated[str, typer.Option(help="Alias, hub id, local folder or .gguf file.")] = "smollm2-135m",
    quantisation: Annotated[str, typer.Option(help="auto, nf4, int8 or none.")] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu or cuda:N (default: best available).")] = None,
) -> None:
    """Load a base as a client would and report its fingerprint and quantisation choice."""
    from stamen.shared.base_model import load_base

    configure_logging(False)
    loaded = load_base(base, quantisation, device)
    for label, value in (("folder", loaded.folder), ("fingerprint", loaded.fingerprint), ("device", loaded.device),
                         ("quantisation", f"{loaded.quantisation.mode} ({loaded.quantisation.reason})"),
                         ("stored bytes", f"{loaded.stored_bytes:,}")):
        console.print(f"{label + ':':15}{value}", soft_wrap=True)  # one line each, however narrow the terminal


def certs(
    out: Annotated[Path, typer.Argument(help="Folder for ca.crt, server.pem/.key and nodes/<name>.key/.pub.")] = Path(
        "certs"
    ),
    host: Annotated[list[str], typer.Option(help="Name or IP the server is reached at (repeat).")] = [
        "127.0.0.1",
        "localhost",
    ],
    node: Annotated[list[str], typer.Option(help="Device name to make a key pair for (repeat).")] = [
        "device-1",
        "device-2",
    ],
) -> None:
    """Make a development CA, server certificate and device keys.

    FOR DEVELOPMENT ONLY, never for production: the CA's private key is written
    unencrypted beside the certificates it signs. Production deployments use
    certificates from their own PKI and keys generated on each device."""
    from stamen.shared.dev_certs import make_dev_certificates

    made = make_dev_certificates(out, host, node)
    console.print(f"CA {made.ca_certificate}, server certificate {made.server_certificate} for {host}, "
                  f"device keys in {out / 'nodes'}: {', '.join(node)}")


def keys(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print docs/configuration.md instead.")] = False,
    toml: Annotated[bool, typer.Option("--toml", help="Print pyproject's Flower app config instead.")] = False,
) -> None:
    """Every configuration key, grouped by concern, with its default and what it does."""
    from rich.table import Table

    from .config_keys import documented_keys, keys_markdown, keys_toml

    if markdown or toml:
        print(keys_markdown() if markdown else keys_toml())
        return
    table = Table(title="Configuration keys (--set key=value, a --preset TOML, Flower's run config)")
    for column in ("group", "key", "default", "what it does"):
        table.add_column(column)
    for doc in documented_keys():
        group = f"{doc.group} (simulation only)" if doc.simulation_only else doc.group
        table.add_row(group, doc.key, repr(doc.default), doc.help)
    console.print(table)
