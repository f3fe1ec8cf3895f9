"""``stamen client join``: this device joins a deployment as a SuperNode. ``stamen chat``: try its model by hand."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stamen.shared.commands import configure_logging, console

client_commands = typer.Typer(help="A device in a deployment.", no_args_is_help=True)


@client_commands.command("join")
def client_join(
    server: Annotated[str, typer.Option(help="The server's host:port.")],
    data: Annotated[
        Path, typer.Option(help="Folder of .txt, or a .jsonl / .csv of this device's examples.", exists=True)
    ],
    key: Annotated[Path, typer.Option(help="This device's private key (registered with the server).", exists=True)],
    ca: Annotated[Path, typer.Option(help="The CA certificate that signed the server's certificate.", exists=True)],
    state_dir: Annotated[Path | None, typer.Option(
        help="Where this device keeps its personal state (default: stamen-devices/<key file name>, so devices "
        "joined from one folder never share one).")] = None,
    name: Annotated[
        str | None, typer.Option(help="Client name in the server's records (default: the data's name).")
    ] = None,
    max_local_steps: Annotated[int | None, typer.Option(help="Decline rounds asking more local steps.")] = None,
    max_round_seconds: Annotated[float | None, typer.Option(help="Decline rounds expected to take longer.")] = None,
    max_memory_mb: Annotated[
        float | None, typer.Option(help="Decline rounds once the process peaks above this.")
    ] = None,
    base: Annotated[str | None, typer.Option(help="This device's own copy of the base (default: the run's).")] = None,
    operator_key: Annotated[
        Path | None, typer.Option(help="The operator's public key (operator.pub): run only runs it signed.",
                                  exists=True, dir_okay=False)
    ] = None,
    wait_for_server: Annotated[
        float, typer.Option(min=0, help="Leave once the server has not answered for this many seconds (the run "
                            "ended); a server that restarts within it is joined again.")
    ] = 600.0,
    secagg_min_threshold: Annotated[
        float, typer.Option(min=0.5, max=0.99, help="Least share of its holders a secure round must need to rebuild "
                            "this device's secrets; the device refuses a server asking for fewer.")
    ] = 0.5,
    secagg_min_neighbours: Annotated[
        int, typer.Option(min=1, help="Fewest neighbours a secure round must give this device to share its secrets "
                          "among; it refuses a round with fewer.")
    ] = 1,
    max_epsilon: Annotated[
        float | None, typer.Option(min=0.0, help="This device's privacy budget: it trains only under distributed DP "
                                   "and stops before its own accountant's epsilon (at delta 1e-5) would pass this.")
    ] = None,
    verbose: Annotated[bool, typer.Option(help="A line for every message (evaluations, secure-aggregation stages) "
                                          "and Flower's own lines (each message, each reconnection).")] = False,
) -> None:
    """Join a Stamen server as a SuperNode with TLS and this device's key; train on local data that never leaves."""
    from stamen.client.device.deployment import DeviceSetup, check_server_address, stay_joined, supernode_command
    from stamen.client.device.resource_guard import ResourceGuards
    from stamen.shared.dev_certs import require_certificate, require_private_key
    from stamen.shared.process_guard import guard

    configure_logging(False)
    check_server_address(server)
    state_dir = state_dir or default_state_dir(key)
    guards = ResourceGuards(max_local_steps, max_round_seconds, max_memory_mb)
    device = DeviceSetup(server, ca, key, data, state_dir, name or data.stem, guards, base, secagg_min_threshold,
                         operator_key, secagg_min_neighbours, max_epsilon)
    supernode_command(device)  # reads the data once: a bad file is reported (DeviceDataError) before joining
    require_certificate(ca, "--ca")
    require_private_key(key, "--key")
    guard(state_dir.resolve())  # the SuperNode and what it starts stop with this command, SIGKILL included
    console.print(f"[bold]Device {device.name}[/] joining {server}; data {data}, state in {state_dir}. Ctrl-C leaves.")
    stay_joined(device, wait_for_server, verbose=verbose)


def default_state_dir(key: Path) -> Path:
    """A device's state folder named after its key (``certs/nodes/device-1.key``: ``stamen-devices/device-1``):
    two devices started in one folder keep apart without a flag."""
    return Path("stamen-devices") / key.stem


def chat(
    adapter: Annotated[Path | None, typer.Option(help="GGUF LoRA adapter (stamen export --format gguf), or its "
                                                 "folder; none: the base alone.")] = None,
    base: Annotated[str, typer.Option(help="The base as a .gguf file, or smollm2-135m (embedded).")] = "smollm2-135m",
    prompt: Annotated[str | None, typer.Option(help="Answer this one message and exit (else: a chat on stdin; "
                                               "an empty line or end of input leaves).")] = None,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest reply, in tokens.")] = 128,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads (default: all).")] = None,
) -> None:
    """Chat with the personalised model through llama.cpp, as an app on the device runs it (greedy, streamed)."""
    from stamen.client.llama_runtime import LlamaModel

    model = LlamaModel.load(base, adapter, threads)
    messages: list[dict[str, str]] = []
    while True:
        said = prompt if prompt is not None else _next_message()
        if not said.strip():
            return
        messages.append({"role": "user", "content": said})
        reply = []
        for piece in model.chat(messages, max_tokens):
            reply.append(piece)
            console.print(piece, end="", markup=False, highlight=False, soft_wrap=True)
        console.print()
        messages.append({"role": "assistant", "content": "".join(reply)})
        if prompt is not None:
            return


def _next_message() -> str:
    """The user's next line; end of input reads as leaving."""
    try:
        return typer.prompt("you", default="", show_default=False, prompt_suffix="> ")
    except typer.Abort:
        return ""
