"""The ``stamen`` command line."""

from __future__ import annotations

import json
import logging
import tomllib
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler

from stamen.shared.config import ConfigError, RunConfig, parse_override

app = typer.Typer(help="Stamen: federated personalisation of quantised language models.", no_args_is_help=True)
console = Console()


def _configure_logging(verbose: bool) -> None:
    handler = RichHandler(console=console, show_path=False, markup=False)
    logging.basicConfig(level=logging.WARNING, handlers=[handler], format="%(message)s", force=True)
    logging.getLogger("stamen").setLevel(logging.INFO)
    import flwr.common  # noqa: F401  -- installs Flower's own console handler, tuned below

    flwr_logger = logging.getLogger("flwr")
    flwr_logger.propagate = False
    for flwr_handler in flwr_logger.handlers:
        flwr_handler.setLevel(logging.INFO if verbose else logging.WARNING)
    for noisy in ("transformers", "httpx", "huggingface_hub", "bitsandbytes"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def _load_config(preset: Path | None, overrides: list[str]) -> RunConfig:
    values: dict = {}
    if preset is not None:
        values.update(tomllib.loads(preset.read_text()))
    for item in overrides:
        key, value = parse_override(item)
        values[key] = value
    return RunConfig.from_flat({**RunConfig().to_flat(), **values})


@app.command()
def simulate(
    clients: Annotated[int, typer.Option(help="Number of virtual clients (one embedded topic each).")] = 4,
    rounds: Annotated[int | None, typer.Option(help="Rounds (overrides num-server-rounds).")] = None,
    preset: Annotated[Path | None, typer.Option(help="TOML file of flat config keys.", exists=True)] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a config key: --set key=value.")] = [],
    resume: Annotated[Path | None, typer.Option(help="Continue runs/<id> from its last completed round.",
                                                exists=True, file_okay=False)] = None,
    cpus_per_client: Annotated[int, typer.Option(help="CPU cores reserved per virtual client.")] = 1,
    gpus_per_client: Annotated[float, typer.Option(help="Fraction of a GPU per virtual client.")] = 0.0,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own INFO logs.")] = False,
) -> None:
    """Run a simulated federation on this machine and write runs/<id>/."""
    from stamen.server.run_record import CONFIG_FILE
    from stamen.simulations.engine import Resources, prepare_base, simulate as run
    from stamen.simulations.progress import RunMonitor, summary_table

    _configure_logging(verbose)
    if resume is not None:
        config, clients, resources = _resumable(resume)
    else:
        config = _new_run_config(preset, set_, clients, rounds)
        resources = Resources(cpus_per_client, gpus_per_client)
    run_dir = Path(config.run_dir) / config.run_id
    _remember_simulation(run_dir, config, clients, resources)
    verb = "Resuming" if resume else "Stamen simulation"
    console.print(f"[bold]{verb}[/] {clients} clients x {config.num_rounds} rounds on base "
                  f"[cyan]{config.base_model}[/] ({config.aggregation}) -> {run_dir}")
    choice = prepare_base(config)
    console.print(f"Quantisation: {choice.reason}")
    with RunMonitor(run_dir, config.num_rounds, clients, console) as monitor:
        run(config, clients, resources, resume=resume is not None)
    meta = json.loads((run_dir / CONFIG_FILE).read_text())
    console.print(summary_table(monitor.rounds, meta["base_stored_bytes"]))
    console.print(
        f"Upload per client per round: {meta['adapter_wire_bytes']:,} bytes of adapter "
        f"({meta['adapter_values']:,} values, {config.wire_dtype}) vs {meta['base_stored_bytes']:,} bytes of base weights."
    )
    console.print(f"Metrics: {run_dir / 'metrics.jsonl'}  Summary: {run_dir / 'summary.json'}")


SIMULATION_FILE = "simulation.json"


def _new_run_config(preset: Path | None, overrides: list[str], clients: int, rounds: int | None) -> RunConfig:
    from stamen.server.run_record import new_run_id

    from stamen.client.attacks import ATTACKS
    from stamen.server.rules import RULES

    try:
        config = _load_config(preset, overrides)
        if config.aggregation not in RULES:
            raise ConfigError(f"configuration key 'aggregation' = {config.aggregation!r} is not a rule: {sorted(RULES)}")
        if config.attack not in ("none", *ATTACKS):
            raise ConfigError(f"configuration key 'attack' = {config.attack!r} is not an attack: {sorted(ATTACKS)}")
        extra = {"min-clients": min(config.min_clients, clients), "run-id": config.run_id or new_run_id()}
        if rounds is not None:
            extra["num-server-rounds"] = rounds
        return config.replace(**extra)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from error


def _remember_simulation(run_dir: Path, config: RunConfig, clients: int, resources) -> None:
    """What ``--resume`` needs to start the same simulation again."""
    from dataclasses import asdict

    from stamen.shared.atomic import atomic_write_text

    record = {"config": config.to_flat(), "clients": clients, "resources": asdict(resources)}
    atomic_write_text(run_dir / SIMULATION_FILE, json.dumps(record, indent=2))


def _resumable(run_dir: Path):
    from stamen.simulations.engine import Resources

    path = run_dir / SIMULATION_FILE
    if not path.is_file():
        raise typer.BadParameter(f"{run_dir} was not started by 'stamen simulate' (no {SIMULATION_FILE})")
    record = json.loads(path.read_text())
    config = RunConfig.from_flat(record["config"]).replace(**{"run-dir": str(run_dir.parent), "run-id": run_dir.name})
    return config, record["clients"], Resources(**record["resources"])


@app.command()
def info(
    base: Annotated[str, typer.Option(help="Alias, hub id, local folder or .gguf file.")] = "smollm2-135m",
    quantisation: Annotated[str, typer.Option(help="auto, nf4, int8 or none.")] = "auto",
    device: Annotated[str | None, typer.Option(help="cpu or cuda:N (default: best available).")] = None,
) -> None:
    """Load a base as a client would and report its fingerprint and quantisation choice."""
    from stamen.shared.base_model import load_base

    _configure_logging(False)
    loaded = load_base(base, quantisation, device)
    console.print(f"folder:        {loaded.folder}")
    console.print(f"fingerprint:   {loaded.fingerprint}")
    console.print(f"device:        {loaded.device}")
    console.print(f"quantisation:  {loaded.quantisation.mode} ({loaded.quantisation.reason})")
    console.print(f"stored bytes:  {loaded.stored_bytes:,}")


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="A run folder, runs/<id>.", exists=True, file_okay=False)],
    round_: Annotated[int | None, typer.Option("--round", help="Round to export (default: the last).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default: runs/<id>/export-round-N).")] = None,
) -> None:
    """Write the global adapter as a PEFT folder that PeftModel.from_pretrained(base, folder) loads."""
    from stamen.server.checkpoint import last_round
    from stamen.server.export import export_peft

    _configure_logging(False)
    chosen = round_ or last_round(run)
    folder = export_peft(run, out or run / f"export-round-{chosen}", chosen)
    console.print(f"PEFT adapter of round {chosen} written to {folder}")


def main() -> None:
    app()
