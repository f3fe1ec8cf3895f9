"""``stamen simulate``, ``report``, ``compare``, ``sweep`` and ``example-data``: many clients on this machine."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from stamen.server.commands import new_run_config
from stamen.shared.commands import configure_logging, console, end_stopped_run, ended_cleanly_when_stopped
from stamen.shared.config import ConfigError, RunConfig
from stamen.shared.run_folder import RunFolder
from stamen.shared.user_errors import UserError
from stamen.simulations.report import write_report


def simulate(
    clients: Annotated[int, typer.Option(min=1, help="Number of virtual clients (one embedded topic each).")] = 4,
    rounds: Annotated[int | None, typer.Option(help="Rounds (overrides num-server-rounds).")] = None,
    preset: Annotated[Path | None, typer.Option(help="TOML file of flat config keys.", exists=True)] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a config key: --set key=value.")] = [],
    resume: Annotated[Path | None, typer.Option(help="Continue runs/<id> from its last completed round.",
                                                exists=True, file_okay=False)] = None,
    cpus_per_client: Annotated[int, typer.Option(help="CPU cores reserved per virtual client.")] = 1,
    gpus_per_client: Annotated[float, typer.Option(help="Fraction of a GPU per virtual client.")] = 0.0,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own INFO logs and libraries' progress bars.")] = False,
) -> None:
    """Run a simulated federation on this machine and write runs/<id>/."""
    configure_logging(verbose)  # before the imports below bring in the libraries it quiets
    from stamen.server.checkpoint import load_checkpoint
    from stamen.server.round_table import summary_table
    from stamen.shared.process_guard import exit_at_once_on_signals, guard
    from stamen.simulations.engine import Resources, prepare_base
    from stamen.simulations.engine import simulate as run
    from stamen.simulations.progress import RunMonitor

    if resume is not None:
        config, clients, resources = _resumable(resume)
        load_checkpoint(resume)  # a corrupt checkpoint is reported now, not after starting Ray
    else:
        config = new_simulation_config(preset, set_, clients, rounds)
        resources = Resources(cpus_per_client, gpus_per_client)
    folder = RunFolder.of(config)
    choice = prepare_base(config)  # a bad base is reported before anything is said or written
    verb = "Resuming" if resume else "Stamen simulation"
    console.print(f"[bold]{verb}[/] {clients} clients x {config.num_rounds} rounds on base "
                  f"[cyan]{config.base_model}[/] ({config.aggregation}) -> {folder.path}")
    console.print(f"Quantisation: {choice.reason}")
    _remember_simulation(folder, config, clients, resources)
    guard(folder.path)  # Ray and what it starts stop with this command
    sampled = max(config.min_clients, int(clients * config.fraction_train))  # as Flower's FedAvg samples
    new_run = resume is None
    with exit_at_once_on_signals(lambda: end_stopped_run(folder, new_run)), \
            ended_cleanly_when_stopped(folder, new_run), \
            RunMonitor(folder, config.num_rounds, sampled, console) as monitor:
        run(config, clients, resources, resume=not new_run)
    meta = folder.record()
    console.print(summary_table(monitor.rounds, meta["base_stored_bytes"]))
    console.print(
        f"Upload per client per round: {meta['adapter_wire_bytes']:,} bytes of adapter "
        f"({meta['adapter_values']:,} values, {config.wire_dtype}) "
        f"vs {meta['base_stored_bytes']:,} bytes of base weights."
    )
    console.print(f"Metrics: {folder.metrics}  Summary: {folder.summary}  Report: {write_report(folder.path)}")


def report(
    run: Annotated[Path, typer.Argument(help="A run folder (runs/<id>).", exists=True, file_okay=False)],
) -> None:
    """(Re)build a run's plots and report.md from its metrics, finished or not."""
    report_written(run)


def report_written(run: Path) -> None:
    console.print(f"Report: {write_report(run)}")


def compare(
    runs: Annotated[
        list[Path],
        typer.Argument(
            help="Run folders to compare, or one preset TOML with [runs.<name>] "
            "tables (see simulations/compare-rules.toml) to run first.",
            exists=True,
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for compare.png/.md/.json (default: runs/compare-<name or time>).")
    ] = None,
    baseline: Annotated[
        str | None,
        typer.Option(
            help="Run (folder name) the others are measured against, seed by seed: forgetting "
            "cut, gain kept, extra client time. A preset names it in [compare]."
        ),
    ] = None,
    seeds: Annotated[
        int | None, typer.Option(min=1, help="Seeds per run of a preset (overrides its [compare] seeds).")
    ] = None,
    target: Annotated[
        float | None, typer.Option(help="Personal held-out loss whose cost (rounds, bytes, client seconds) to report.")
    ] = None,
) -> None:
    """Runs side by side: each number a mean over seeds with its 95% interval, in one plot and one Markdown table
    (a preset's runs are run first). A folder holding seed-*/ run folders counts as one run over those seeds."""
    import dataclasses

    from stamen.server.run_record import new_run_id
    from stamen.simulations.comparison import compare_runs, seed_folders

    if len(runs) == 1 and runs[0].suffix == ".toml":
        from stamen.shared.process_guard import guard
        from stamen.simulations.preset_comparison import Campaign, run_campaign

        campaign = Campaign.from_toml(runs[0])
        campaign = dataclasses.replace(campaign, seeds=seeds or campaign.seeds,
                                       target=campaign.target if target is None else target)
        folder = out or Path("runs") / f"compare-{runs[0].stem}"
        console.print(f"[bold]Compare[/] {len(campaign.runs)} runs ({', '.join(campaign.runs)}) x {campaign.seeds} "
                      f"seeds, {campaign.clients} clients x {campaign.rounds} rounds -> {folder}")
        guard(folder)  # the run in flight, and what it started, stops with this command
        table = run_campaign(campaign, folder)
    else:
        named = {run.name: seed_folders(run) for run in runs}
        table = compare_runs(named, out or Path("runs") / f"compare-{new_run_id()}", baseline, target)
    console.print(table.read_text())
    console.print(f"Plot and table: {table.parent}")


def new_simulation_config(
    preset: Path | None, overrides: list[str], clients: int | None, rounds: int | None
) -> RunConfig:
    """A server's run config (:func:`stamen.server.commands.new_run_config`) whose attack exists, whose
    dataset is dealt out before any process starts (a path made absolute, so every client process reads the same
    file) and whose minimum of clients the simulation can meet."""
    from stamen.simulations.attacks import ATTACKS

    config = new_run_config(preset, overrides, rounds)
    if config.attack.name not in ("none", *ATTACKS):
        raise ConfigError(f"configuration key 'attack' = {config.attack.name!r} is not an attack: "
                          f"{sorted(ATTACKS)}")
    if config.data.dataset:
        config = config.replace(dataset=str(Path(config.data.dataset).expanduser().resolve()))
    if clients is None:
        return config
    from stamen.simulations.partitions import client_datasets

    client_datasets(clients, config.seed, config.data)  # data that cannot be dealt fails here, named
    return config.replace(**{"min-clients": min(config.min_clients, clients)})  # it cannot wait for more


def _remember_simulation(folder: RunFolder, config: RunConfig, clients: int, resources) -> None:
    """What ``--resume`` needs to start the same simulation again."""
    from dataclasses import asdict

    from stamen.shared.atomic import atomic_write_text

    record = {"config": config.to_flat(), "clients": clients, "resources": asdict(resources)}
    atomic_write_text(folder.simulation, json.dumps(record, indent=2))


def _resumable(run_dir: Path):
    from stamen.simulations.engine import Resources

    path = RunFolder(run_dir).simulation
    if not path.is_file():
        raise UserError(f"{run_dir} was not started by 'stamen simulate' (no {path.name}): give --resume a "
                        "runs/<id> folder")
    record = json.loads(path.read_text())
    config = RunConfig.from_flat(record["config"]).replace(**{"run-dir": str(run_dir.parent), "run-id": run_dir.name})
    return config, record["clients"], Resources(**record["resources"])


def sweep(
    grid: Annotated[
        Path,
        typer.Argument(
            help="TOML with [sweep] rules/attacks/fractions (see simulations/robustness.toml).",
            exists=True,
            dir_okay=False,
        ),
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for the cells' runs and results (default: runs/sweep-<name>).")
    ] = None,
    parallel: Annotated[int, typer.Option(help="Cells run at once (each a whole simulation).")] = 1,
    seeds: Annotated[int | None, typer.Option(min=1, help="Seeds per cell (overrides [sweep] seeds).")] = None,
) -> None:
    """Run rules x attacks x malicious fractions for each seed; skip finished runs; write a table of means with 95%
    intervals (the harm of each attack paired by seed with its rule's clean run) and heat maps."""
    import dataclasses

    from stamen.shared.process_guard import guard
    from stamen.simulations.sweep import SweepSpec, run_sweep

    spec = SweepSpec.from_toml(grid)
    spec = dataclasses.replace(spec, seeds=seeds or spec.seeds)
    folder = out or Path("runs") / f"sweep-{grid.stem}"
    console.print(f"[bold]Sweep[/] {len(spec.cells())} cells ({len(spec.rules)} rules x {len(spec.attacks)} attacks x "
                  f"fractions {list(spec.fractions)}) x {spec.seeds} seeds, {spec.clients} clients x {spec.rounds} "
                  f"rounds -> {folder}")
    guard(folder)  # the runs in flight, and what they started, stop with this command
    run_sweep(spec, folder, parallel)
    console.print((folder / "sweep.md").read_text())
    console.print(f"Heat maps: {folder}/heatmap-*.png  Table: {folder / 'sweep.md'}")


def example_data(
    out: Annotated[Path, typer.Argument(help="Folder for device-1.jsonl, device-2.jsonl, ...")] = Path("."),
    devices: Annotated[int, typer.Option(min=1, help="How many devices to write data for.")] = 2,
) -> None:
    """Write each device's private data as a .jsonl (one embedded-corpus topic each), to try a deployment."""
    from stamen.shared.corpus import write_device_files

    for path, topic in write_device_files(out, devices):
        console.print(f"{path}: {topic}")
