"""Base loads and seconds per round on deployed devices: a real deployment on 127.0.0.1, as the README starts it.

``stamen server start`` and two ``stamen client join`` processes (TLS, device keys, operator
signature) run ``--rounds`` rounds with evaluation on the given base. From the devices' logs (``--verbose``: Flower's
message lines and transformers' progress bars): how many train/evaluate messages each received and how many of
them loaded a base (transformers' "Loading weights" bar appears in the message's stretch of the log); from the
run: wall seconds per round. ``--stamen`` points at another installation's ``stamen`` to measure an older version
the same way.

    python benchmarks/device_rounds.py [--base smollm2-135m] [--rounds 3] [--stamen PATH] [--label NAME] [--keep DIR]
                                       [--set KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_results_option, add_settings_option, print_table, write_results

DEVICES = ("device-1", "device-2")


def measure(stamen: str, base: str, rounds: int, folder: Path, extra: list[str]) -> dict:
    def run(*args: str) -> None:
        subprocess.run([stamen, *args], cwd=folder, check=True, capture_output=True)

    run("certs", "certs", *(item for name in DEVICES for item in ("--node", name)))
    run("example-data", ".", "--devices", str(len(DEVICES)))
    environment = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    port = _free_port()
    settings = [f"base-model={base}", "min-clients=2", "fraction-evaluate=1.0", f"run-dir={folder / 'runs'}", *extra]
    server_log = (folder / "server.log").open("wb")
    started = time.perf_counter()
    server = subprocess.Popen([stamen, "server", "start", "--certs", "certs", "--port", str(port), "--rounds",
                               str(rounds), *(x for s in settings for x in ("--set", s))], cwd=folder,
                              env=environment, stdout=server_log, stderr=subprocess.STDOUT, start_new_session=True)
    devices = []
    for name in DEVICES:
        log = (folder / f"{name}.log").open("wb")
        devices.append(subprocess.Popen(
            [stamen, "client", "join", "--server", f"127.0.0.1:{port}", "--data", f"{name}.jsonl", "--key",
             f"certs/nodes/{name}.key", "--ca", "certs/ca.crt", "--operator-key", "certs/operator.pub",
             "--state-dir", f"state-{name}", "--verbose"], cwd=folder, env=environment, stdout=log,
            stderr=subprocess.STDOUT, start_new_session=True))
    try:
        code = server.wait(timeout=3600)
    finally:
        seconds = time.perf_counter() - started
        for process in [server, *devices]:
            subprocess.run(["pkill", "-KILL", "-s", str(process.pid)], check=False)  # the session, whatever version
    if code != 0:
        raise SystemExit(f"the server exited with {code}; see {folder / 'server.log'}")
    logs = [(folder / f"{name}.log").read_text(errors="replace") for name in DEVICES]
    # each message's stretch of a device log, from its "Receiving" line to the next: did it load a base?
    stretches = [part for log in logs for part in re.split(r"Receiving: (?:train|evaluate) message", log)[1:]]
    loading = sum("Loading weights" in part for part in stretches)
    return {"rounds": rounds, "device messages": len(stretches), "messages that loaded the base": loading,
            "loads per device round": round(loading / (len(DEVICES) * rounds), 2),
            "seconds per round": round(seconds / rounds, 1)}


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stamen", default=str(Path(sys.executable).parent / "stamen"))
    parser.add_argument("--label", default="this version")
    parser.add_argument("--keep", type=Path, help="Run in this folder and keep its logs (default: a temporary one).")
    add_settings_option(parser, "another setting of the server's run (e.g. secure-aggregation=true), with --label")
    add_results_option(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        folder = args.keep or Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        row = {"version": args.label, **measure(args.stamen, args.base, args.rounds, folder, args.extra)}
    print_table([row])
    label = re.sub(r"[^a-z0-9]+", "-", args.label.lower())
    write_results(f"device_rounds-{label}", [row], args.results, base=args.base)


if __name__ == "__main__":
    main()
