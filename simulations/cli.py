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
from stamen.simulations.report import compare_runs, write_report

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
    from stamen.simulations.engine import Resources, prepare_base
    from stamen.simulations.engine import simulate as run
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
    sampled = max(config.min_clients, int(clients * config.fraction_train))  # as Flower's FedAvg samples
    with RunMonitor(run_dir, config.num_rounds, sampled, console) as monitor:
        run(config, clients, resources, resume=resume is not None)
    meta = json.loads((run_dir / CONFIG_FILE).read_text())
    console.print(summary_table(monitor.rounds, meta["base_stored_bytes"]))
    console.print(
        f"Upload per client per round: {meta['adapter_wire_bytes']:,} bytes of adapter "
        f"({meta['adapter_values']:,} values, {config.wire_dtype}) vs {meta['base_stored_bytes']:,} bytes of base weights."
    )
    console.print(f"Metrics: {run_dir / 'metrics.jsonl'}  Summary: {run_dir / 'summary.json'}  "
                  f"Report: {write_report(run_dir)}")


@app.command()
def report(
    run: Annotated[Path, typer.Argument(help="A run folder (runs/<id>).", exists=True, file_okay=False)],
) -> None:
    """(Re)build a run's plots and report.md from its metrics, finished or not."""
    console.print(f"Report: {write_report(run)}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare, or one preset TOML with [runs.<name>] "
                                                     "tables (see simulations/compare-rules.toml) to run first.",
                                                exists=True)],
    out: Annotated[Path | None, typer.Option(help="Folder for compare.png/.md/.json (default: runs/compare-<name or time>).")] = None,
    baseline: Annotated[str | None, typer.Option(help="Run (folder name) the others are measured against: forgetting "
                                                      "cut, gain kept, extra client time. A preset names it in [compare].")] = None,
) -> None:
    """Overlay several runs' held-out loss in one plot and one Markdown table (running a preset's runs first)."""
    from stamen.server.run_record import new_run_id

    if len(runs) == 1 and runs[0].suffix == ".toml":
        from stamen.simulations.campaign import Campaign, run_campaign

        campaign = Campaign.from_toml(runs[0])
        folder = out or Path("runs") / f"compare-{runs[0].stem}"
        console.print(f"[bold]Compare[/] {len(campaign.runs)} runs ({', '.join(campaign.runs)}), {campaign.clients} "
                      f"clients x {campaign.rounds} rounds -> {folder}")
        table = run_campaign(campaign, folder)
    else:
        table = compare_runs(runs, out or Path("runs") / f"compare-{new_run_id()}", baseline)
    console.print(table.read_text())
    console.print(f"Plot and table: {table.parent}")


SIMULATION_FILE = "simulation.json"


def _new_run_config(preset: Path | None, overrides: list[str], clients: int | None, rounds: int | None) -> RunConfig:
    from stamen.client.attacks import ATTACKS
    from stamen.server.rules import RULES
    from stamen.server.run_record import new_run_id

    try:
        config = _load_config(preset, overrides)
        if config.aggregation not in RULES:
            raise ConfigError(f"configuration key 'aggregation' = {config.aggregation!r} is not a rule: {sorted(RULES)}")
        if config.attack not in ("none", *ATTACKS):
            raise ConfigError(f"configuration key 'attack' = {config.attack!r} is not an attack: {sorted(ATTACKS)}")
        extra = {"run-id": config.run_id or new_run_id()}
        if clients is not None:  # a simulation cannot wait for more clients than it has
            extra["min-clients"] = min(config.min_clients, clients)
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
    for label, value in (("folder", loaded.folder), ("fingerprint", loaded.fingerprint), ("device", loaded.device),
                         ("quantisation", f"{loaded.quantisation.mode} ({loaded.quantisation.reason})"),
                         ("stored bytes", f"{loaded.stored_bytes:,}")):
        console.print(f"{label + ':':15}{value}", soft_wrap=True)  # one line each, however narrow the terminal


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


@app.command()
def sweep(
    grid: Annotated[Path, typer.Argument(help="TOML with [sweep] rules/attacks/fractions (see simulations/robustness.toml).",
                                         exists=True, dir_okay=False)],
    out: Annotated[Path | None, typer.Option(help="Folder for the cells' runs and results (default: runs/sweep-<name>).")] = None,
    parallel: Annotated[int, typer.Option(help="Cells run at once (each a whole simulation).")] = 1,
) -> None:
    """Run rules x attacks x malicious fractions with the same seeds; skip finished cells; write a table and heat maps."""
    from stamen.simulations.sweep import SweepSpec, run_sweep

    spec = SweepSpec.from_toml(grid)
    folder = out or Path("runs") / f"sweep-{grid.stem}"
    console.print(f"[bold]Sweep[/] {len(spec.cells())} cells ({len(spec.rules)} rules x {len(spec.attacks)} attacks x "
                  f"fractions {list(spec.fractions)}), {spec.clients} clients x {spec.rounds} rounds -> {folder}")
    run_sweep(spec, folder, parallel)
    console.print((folder / "sweep.md").read_text())
    console.print(f"Heat maps: {folder}/heatmap-*.png  Table: {folder / 'sweep.md'}")


@app.command()
def certs(
    out: Annotated[Path, typer.Argument(help="Folder for ca.crt, server.pem/.key and nodes/<name>.key/.pub.")] = Path("certs"),
    host: Annotated[list[str], typer.Option(help="Name or IP the server is reached at (repeat).")] = ["127.0.0.1", "localhost"],
    node: Annotated[list[str], typer.Option(help="Device name to make a key pair for (repeat).")] = ["device-1", "device-2"],
) -> None:
    """Make a development CA, server certificate and device keys.

    FOR DEVELOPMENT ONLY, never for production: the CA's private key is written
    unencrypted beside the certificates it signs. Production deployments use
    certificates from their own PKI and keys generated on each device."""
    from stamen.shared.dev_certs import make_dev_certificates

    made = make_dev_certificates(out, host, node)
    console.print(f"CA {made.ca_certificate}, server certificate {made.server_certificate} for {host}, "
                  f"device keys in {out / 'nodes'}: {', '.join(node)}")


@app.command("example-data")
def example_data(
    out: Annotated[Path, typer.Argument(help="Folder for device-1.jsonl, device-2.jsonl, ...")] = Path("."),
    devices: Annotated[int, typer.Option(help="How many devices to write data for.")] = 2,
) -> None:
    """Write each device's private data as a .jsonl (one embedded-corpus topic each), to try a deployment."""
    from stamen.simulations.corpus import write_device_files

    for path, topic in write_device_files(out, devices):
        console.print(f"{path}: {topic}")


server_commands = typer.Typer(help="The server side of a deployment on real devices.", no_args_is_help=True)
client_commands = typer.Typer(help="A device in a deployment.", no_args_is_help=True)
app.add_typer(server_commands, name="server")
app.add_typer(client_commands, name="client")


@server_commands.command("start")
def server_start(
    certs: Annotated[Path, typer.Option(help="Folder made by 'stamen certs' (or your own with the same names).",
                                        exists=True, file_okay=False)] = Path("certs"),
    host: Annotated[str, typer.Option(help="Interface the SuperLink listens on (0.0.0.0: all).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The SuperLink's port (TLS).")] = 9091,
    preset: Annotated[Path | None, typer.Option(help="TOML file of flat config keys.", exists=True)] = None,
    set_: Annotated[list[str], typer.Option("--set", help="Override a config key: --set key=value.")] = [],
    rounds: Annotated[int | None, typer.Option(help="Rounds (overrides num-server-rounds).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue runs/<id> from its last completed round.",
                                                exists=True, file_okay=False)] = None,
    work_dir: Annotated[Path, typer.Option(help="Flower's CLI home, the generated app and logs.")] = Path("stamen-server"),
    keep_running: Annotated[bool, typer.Option(help="Keep the SuperLink up after the run (for 'flwr run').")] = False,
) -> None:
    """Start a SuperLink with TLS and device authentication, register the devices' keys, and run the federation."""
    from stamen.server import deployment as deploy
    from stamen.shared.dev_certs import DevCertificates

    _configure_logging(False)
    found = DevCertificates(certs)
    if resume is not None:
        config = deploy.resumed_config(resume)
    else:
        config = _new_run_config(preset, set_, None, rounds)
        config = config.replace(**{"run-dir": str(Path(config.run_dir).resolve())})
    setup = deploy.ServerDeployment(
        deploy.TlsFiles(found.ca_certificate, found.server_certificate, found.server_key), host, port, work_dir.resolve())
    superlink = deploy.start_superlink(setup)
    try:
        deploy.write_connection(setup)
        deploy.register_nodes(setup, found.node_public_keys())
        console.print(f"[bold]Stamen server[/] on {setup.reachable_address}: waiting for {config.min_clients} devices, "
                      f"then {config.num_rounds} rounds -> {Path(config.run_dir) / config.run_id}")
        run_dir = deploy.run_federation_on(setup, config)
        rounds_done = json.loads((run_dir / "summary.json").read_text())["rounds"]
        from stamen.simulations.progress import summary_table

        console.print(summary_table(rounds_done, json.loads((run_dir / "config.json").read_text())["base_stored_bytes"]))
        if keep_running:
            console.print(f"SuperLink still up; FLWR_HOME={setup.flower_home} flwr run <app> stamen. Ctrl-C stops it.")
            superlink.wait()
    except deploy.DeploymentError as error:
        console.print(f"[red]{error}[/]")
        raise typer.Exit(1) from None
    finally:
        deploy.stop(superlink)


@client_commands.command("join")
def client_join(
    server: Annotated[str, typer.Option(help="The server's host:port.")],
    data: Annotated[Path, typer.Option(help="Folder of .txt, or a .jsonl / .csv of this device's examples.", exists=True)],
    key: Annotated[Path, typer.Option(help="This device's private key (registered with the server).", exists=True)],
    ca: Annotated[Path, typer.Option(help="The CA certificate that signed the server's certificate.", exists=True)],
    state_dir: Annotated[Path, typer.Option(help="Where this device keeps its personal state.")] = Path("stamen-device"),
    name: Annotated[str | None, typer.Option(help="Client name in the server's records (default: the data's name).")] = None,
    max_local_steps: Annotated[int | None, typer.Option(help="Decline rounds asking more local steps.")] = None,
    max_round_seconds: Annotated[float | None, typer.Option(help="Decline rounds expected to take longer.")] = None,
    max_memory_mb: Annotated[float | None, typer.Option(help="Decline rounds once the process peaks above this.")] = None,
    base: Annotated[str | None, typer.Option(help="This device's own copy of the base (default: the run's).")] = None,
) -> None:
    """Join a Stamen server as a SuperNode with TLS and this device's key; train on local data that never leaves."""
    from stamen.client.deployment import DeviceSetup, stay_joined, supernode_command
    from stamen.client.device_data import DeviceDataError
    from stamen.client.resource_guard import ResourceGuards

    _configure_logging(False)
    guards = ResourceGuards(max_local_steps, max_round_seconds, max_memory_mb)
    device = DeviceSetup(server, ca, key, data, state_dir, name or data.stem, guards, base)
    try:
        supernode_command(device)  # reads the data once: a bad file is reported before joining
    except DeviceDataError as error:
        raise typer.BadParameter(str(error)) from error
    console.print(f"[bold]Device {device.name}[/] joining {server}; data {data}, state in {state_dir}. Ctrl-C leaves.")
    stay_joined(device)


def main() -> None:
    app()
