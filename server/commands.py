"""``stamen server start`` (a deployment's server) and ``stamen export`` (a run's global adapter as PEFT)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stamen.shared.commands import configure_logging, console, ended_cleanly_when_stopped, load_config
from stamen.shared.config import ConfigError, RunConfig
from stamen.shared.run_folder import RunFolder

from .round_table import summary_table

if TYPE_CHECKING:
    from .deployment import ServerDeployment

# What else a finished deployment run writes, added by the command-line root (report.md and plots come from the
# simulations room, above this one): each gets the run folder.
RUN_FINISHERS: list[Callable[[Path], None]] = []
server_commands = typer.Typer(help="The server side of a deployment on real devices.", no_args_is_help=True)


def new_run_config(preset: Path | None, overrides: list[str], rounds: int | None) -> RunConfig:
    """The run config a command line asks for, with a new run id; a bad key or rule is a :class:`ConfigError`."""
    from stamen.server.rules import RULES
    from stamen.server.run_record import new_run_id

    config = load_config(preset, overrides)
    if config.aggregation not in RULES:
        raise ConfigError(f"configuration key 'aggregation' = {config.aggregation!r} is not a rule: {sorted(RULES)}")
    RULES[config.aggregation].check_fits(config)
    extra = {"run-id": config.run_id or new_run_id()}
    if rounds is not None:
        extra["num-server-rounds"] = rounds
    return config.replace(**extra)


@server_commands.command("start")
def server_start(
    certs: Annotated[
        Path,
        typer.Option(
            help="Folder made by 'stamen certs' (or your own with the same names).", exists=True, file_okay=False
        ),
    ] = Path("certs"),
    host: Annotated[str, typer.Option(help="Interface devices reach the server on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The devices' port (TLS; Flower's Fleet API only).")] = 9091,
    superlink_port: Annotated[
        int | None, typer.Option(help="The SuperLink's own port, on loopback only (default: a free one).")
    ] = None,
    preset: Annotated[Path | None, typer.Option(help="TOML file of flat config keys.", exists=True)] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a config key: --set key=value.")] = [],
    rounds: Annotated[int | None, typer.Option(help="Rounds (overrides num-server-rounds).")] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue runs/<id> from its last completed round.", exists=True, file_okay=False),
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="Flower's CLI home, the generated app and logs.")] = Path(
        "stamen-server"
    ),
    keep_running: Annotated[bool, typer.Option(help="Keep the SuperLink up after the run (for 'flwr run').")] = False,
) -> None:
    """Start a SuperLink with TLS and device authentication, register the devices' keys, and run the federation.

    Devices reach only Flower's Fleet API on --host/--port; the SuperLink itself (whose Control API starts runs
    and registers keys) listens on 127.0.0.1."""
    from stamen.server import deployment as deploy
    from stamen.server.anchor_distribution import pin_anchor
    from stamen.shared.dev_certs import DevCertificates
    from stamen.shared.flower_tools import free_port
    from stamen.shared.process_guard import guard
    from stamen.shared.run_signature import sign_run
    from stamen.shared.secagg_identity import roster_of

    configure_logging(False)
    found = DevCertificates(certs)
    config = _server_run_config(resume, preset, set_, rounds)  # a bad key is reported before the work dir is made
    found.check_server_files()
    if not work_dir.exists():
        deploy.require_free_port(host, port)  # no leftover of ours can hold it: refuse before making anything
    guard(work_dir.resolve())  # stops an earlier command's leftovers; what this one starts stops with it
    deploy.require_free_port(host, port)
    if found.operator_key.is_file():  # devices that trust the operator run only what it signed
        if config.privacy.secure_aggregation:  # ... and accept secure-aggregation keys of these devices only
            config = config.replace(**{"secagg-roster": ",".join(roster_of(found.node_public_keys()))})
        config = sign_run(pin_anchor(config), found.operator_key)
    setup = deploy.ServerDeployment(
        deploy.TlsFiles(found.ca_certificate, found.server_certificate, found.server_key),
        host,
        port,
        work_dir.resolve(),
        superlink_port or free_port(),
    )
    folder = RunFolder.of(config)
    with ended_cleanly_when_stopped(folder, new_run=resume is None):  # runs after the processes below stopped
        _serve(setup, found.node_public_keys(), config, folder, keep_running)


def _server_run_config(resume: Path | None, preset: Path | None, overrides: list[str], rounds: int | None
                       ) -> RunConfig:
    """The run to serve: a resumed run's config (its checkpoint read now, so a corrupt one is reported before any
    process starts), or a new one from the command line, its run folder made absolute."""
    from stamen.server import deployment as deploy
    from stamen.server.checkpoint import load_checkpoint

    if resume is not None:
        config = deploy.resumed_config(resume)
        load_checkpoint(resume)
        return config
    config = new_run_config(preset, overrides, rounds)
    return config.replace(**{"run-dir": str(Path(config.run_dir).resolve())})


def _serve(
    setup: ServerDeployment, node_keys: list[Path], config: RunConfig, folder: RunFolder, keep_running: bool
) -> None:
    """The SuperLink and the devices' gateway for one run; both stop when it ends, fails or is stopped."""
    from stamen.server import deployment as deploy

    superlink, gateway = deploy.start_superlink(setup), None
    try:
        gateway = deploy.start_gateway(setup, node_keys)
        deploy.write_connection(setup)
        deploy.register_nodes(setup, node_keys)
        console.print(f"[bold]Stamen server[/] on {setup.reachable_address}: waiting for {config.min_clients} devices, "
                      f"then {config.num_rounds} rounds -> {folder.path}")
        deploy.run_federation_on(setup, config)
        console.print(summary_table(folder.summary_record()["rounds"], folder.record()["base_stored_bytes"]))
        for finish in RUN_FINISHERS:
            finish(folder.path)
        if keep_running:
            console.print(f"SuperLink still up on {setup.superlink_address}; FLWR_HOME={setup.flower_home} "
                          f"flwr run <app> stamen. Ctrl-C stops it.")
            superlink.wait()
    except deploy.DeploymentError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    finally:
        if gateway:
            gateway.stop()
        deploy.stop(superlink)


def export(
    run: Annotated[Path, typer.Argument(help="A run folder, runs/<id>.", exists=True, file_okay=False)],
    round_: Annotated[int | None, typer.Option("--round", help="Round to export (default: the last).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: runs/<id>/export-round-N).")] = None,
    format_: Annotated[str, typer.Option("--format", help="peft: a PEFT folder; gguf: adapter.gguf for llama.cpp.")]
    = "peft",
    alpha: Annotated[float, typer.Option(help="Write base + alpha x the adapter (WiSE-FT; 1: as trained).",
                                         min=0.0, max=1.0)] = 1.0,
) -> None:
    """Write the global adapter as a PEFT folder that PeftModel.from_pretrained(base, folder) loads, or as a GGUF
    LoRA adapter that llama.cpp loads beside the base's GGUF."""
    from stamen.server.checkpoint import last_round
    from stamen.server.export import export_adapter

    configure_logging(False)
    chosen = round_ or last_round(run)
    written = export_adapter(run, out or run / f"export-round-{chosen}", chosen, format_, alpha)
    console.print(f"{'GGUF' if format_ == 'gguf' else 'PEFT'} adapter of round {chosen} written to {written}")
