"""A real deployment on 127.0.0.1: SuperLink and SuperNodes started by `stamen server start` / `stamen client join`
with TLS and SuperNode authentication, as in the README's "Deploy on real devices"."""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest
from deployment_helpers import Processes, free_port, tiny_run_args, wait_for

from stamen.client.device.deployment import DeviceSetup, supernode_command
from stamen.server.deployment import write_flower_app
from stamen.shared.config import RunConfig
from stamen.shared.dev_certs import DevCertificates, add_node_key
from stamen.shared.flower_tools import flower_environment, flower_tool
from stamen.shared.run_folder import RunFolder
from stamen.shared.run_signature import write_operator_keys


@pytest.fixture
def site(tmp_path: Path):
    processes = Processes(tmp_path)
    processes.run("certs", "certs", "--node", "device-1", "--node", "device-2", "--node", "device-3")
    processes.run("example-data", ".", "--devices", "3")
    yield processes
    processes.close()


def _rows(run_dir: Path) -> list[dict]:
    return RunFolder(run_dir).rows()


def _refused(log: Path, command: list[str]) -> tuple[int, str]:
    """Run a SuperNode that should be turned away; its exit code and output."""
    with log.open("wb") as output:
        process = subprocess.Popen([*command, "--max-retries", "1", "--max-wait-time", "20"], stdout=output,
                                   stderr=subprocess.STDOUT, env=flower_environment(), start_new_session=True)
    try:
        code = process.wait(timeout=90)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # its SuperExec child too
    return code, log.read_text(errors="replace")


def _run_dir(runs: Path) -> Path:
    (run_dir,) = runs.iterdir()
    return run_dir


def test_readme_sequence_with_tls_and_auth_refuses_strangers_plaintext_and_another_base(site, tmp_path,
                                                                                     other_tiny_folder):
    port, runs = free_port(), tmp_path / "runs"
    data = [tmp_path / f"device-{n}.jsonl" for n in (1, 2, 3)]
    site.server("server", port, *tiny_run_args(runs, rounds=1, min_clients=3))
    wait_for(lambda: "registered device key device-3" in site.log("server"), 90, "the server to register keys")

    stranger = DevCertificates(tmp_path / "stranger")
    add_node_key(stranger, "device-9")  # a valid key the server never registered
    stranger_node = DeviceSetup(f"127.0.0.1:{port}", tmp_path / "certs/ca.crt", stranger.node_key("device-9"),
                                data[0], tmp_path / "stranger-state", "stranger")
    code, output = _refused(tmp_path / "stranger.log", supernode_command(stranger_node))
    assert code != 0 and "Failed to activate SuperNode" in output
    code, output = _refused(tmp_path / "plaintext.log", [flower_tool("flower-supernode"),
                                                         "--superlink", f"127.0.0.1:{port}", "--insecure",
                                                         "--port", str(free_port())])
    assert code != 0 and "could not establish a connection" in output
    # the same two mistakes through `stamen client join`: one line each, exit status 2, no retrying forever
    site.run("certs", "other-ca", "--node", "device-9")
    site.start("unregistered", "client", "join", "--server", f"127.0.0.1:{port}", "--data", str(data[0]),
               "--key", "other-ca/nodes/device-9.key", "--ca", "certs/ca.crt")
    site.start("wrong-ca", "client", "join", "--server", f"127.0.0.1:{port}", "--data", str(data[0]),
               "--key", "certs/nodes/device-1.key", "--ca", "other-ca/ca.crt")
    for name, told in (("unregistered", "error: the server does not know this device's key other-ca/nodes/device-9"),
                       ("wrong-ca", "error: the server's certificate is not signed by --ca other-ca/ca.crt")):
        wait_for(lambda name=name: site.started[name].poll() is not None, 180, f"the {name} device to stop")
        output = site.log(name)
        assert site.started[name].returncode == 2 and told in output, output[-3000:]
        assert "Exit Code: 305" not in output and "Traceback" not in output and len(output.splitlines()) <= 10

    site.device("device-1", port, data[0], "--wait-for-server", "5")
    site.device("device-2", port, data[1])
    site.device("device-3", port, data[2], "--base", str(other_tiny_folder))  # this device's base differs
    wait_for(lambda: site.started["server"].poll() is not None, 420, "the run to finish")
    assert site.started["server"].returncode == 0, site.log("server")[-3000:]
    # once the run has ended and the server is gone, a device leaves by itself; Flower's app stays in its state dir
    wait_for(lambda: site.started["device-1"].poll() is not None, 120, "device-1 to leave after the run")
    assert site.started["device-1"].returncode == 0 and "(the run ended?): leaving" in site.log("device-1")
    assert list((tmp_path / "state-device-1/flwr-home").rglob("pyproject.toml"))
    site.kill("device-2")  # SIGKILL to a device still waiting: its SuperNode and worker go with it

    superlink_log = (tmp_path / "work-server/superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    rows = _rows(_run_dir(runs))
    assert (_run_dir(runs) / "report.md").is_file() and (_run_dir(runs) / "loss.png").is_file()  # as a simulation
    rejected = [r for r in rows if r["kind"] == "client" and not r["accepted"]]
    assert len(rejected) == 1 and "fingerprint" in rejected[0]["reason"]
    (round_row,) = [r for r in rows if r["kind"] == "round"]
    assert round_row["clients_accepted"] == 2 and round_row["clients_rejected"] == 1
    assert round_row["clients_sampled"] == 3 and round_row["bytes_in"] > 0
    assert "rejected train reply" in site.log("server") and "fingerprint" in site.log("server")


def test_a_killed_device_and_a_killed_server_do_not_stop_a_secure_federation(site, tmp_path):
    port, runs = free_port(), tmp_path / "runs"
    data = [tmp_path / f"device-{n}.jsonl" for n in (1, 2, 3)]
    # min-clients 3: each round (the resumed one too) waits for all three devices before it samples
    site.server("server", port, *tiny_run_args(runs, 2, 3, "round-timeout=60", "secure-aggregation=true",
                                                "secagg-timeout=60"))
    for number, path in enumerate(data, start=1):
        site.device(f"device-{number}", port, path, *(["--verbose"] if number == 3 else []))
    wait_for(lambda: "Receiving: train message" in site.log("device-3"), 180, "device-3 to be sampled in round 1")
    assert "Receiving: train message" not in site.log("device-1")  # Flower's message lines only with --verbose
    run_dir = _run_dir(runs)

    site.kill("device-3", signal.SIGTERM)  # leaves in round 1, which must still complete with the other two
    wait_for(lambda: (run_dir / "rounds/round-1.safetensors").is_file(), 300, "round 1 to complete")
    round_one = next(r for r in _rows(run_dir) if r["kind"] == "round")
    assert round_one["clients_accepted"] == 2
    # a device that went away did not reply (it is not a rejected reply), logged under its own node id
    assert (round_one["clients_without_reply"], round_one["clients_rejected"]) == (1, 0)
    assert "did not reply: Error: Node Unavailable" in site.log("server")
    assert "from node 1:" not in site.log("server")  # not the SuperLink's id, as Flower's stand-in error has

    site.kill("server")  # SIGKILL `stamen server start` alone after round 1: its SuperLink goes with it
    saved = hashlib.sha256((run_dir / "rounds/round-1.safetensors").read_bytes()).hexdigest()
    site.device("device-3", port, data[2], "--verbose")  # the device comes back
    site.server("server-again", port, "--resume", str(run_dir), work_dir="work-server")  # the README's command
    wait_for(lambda: site.started["server-again"].poll() is not None, 480, "the resumed run to finish")
    assert site.started["server-again"].returncode == 0, site.log("server-again")[-3000:]

    rounds = RunFolder(run_dir).summary_record()["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert hashlib.sha256((run_dir / "rounds/round-1.safetensors").read_bytes()).hexdigest() == saved
    assert "Resuming" in site.log("server-again") and "after round 1" in site.log("server-again")
    assert rounds[1]["clients_accepted"] == 3  # the returning device is admitted again
    assert "secure train sum of 3 of 3 clients" in site.log("server-again")  # secure aggregation across real nodes
    device_log = site.log("device-1")  # joined for the whole run, through the server's kill and resume
    assert device_log.count("loaded base") == 1, device_log[-3000:]  # one load for every message, both rounds
    # a device's one line per round: its numbers, kept on the device under secure aggregation; each secure stage's
    # line (its bytes) only with --verbose
    assert device_log.count("round 2 train: train-steps") == 1
    assert "kept on this device for the secure sum" in device_log
    assert "secagg_mask" not in device_log and "round ?" not in device_log
    assert "round 2 train secagg_mask:" in site.log("device-3")


def test_an_outsider_reaches_only_the_fleet_api_and_a_device_runs_only_what_its_operator_signed(site, tmp_path):
    """``--host 0.0.0.0``: the devices' port forwards Flower's Fleet API and nothing else, and the SuperLink
    (whose Control API starts runs and registers keys for anyone reaching it) listens on loopback only. A
    device that trusts another operator's key refuses the run; the other two train."""
    port, runs = free_port(), tmp_path / "runs"
    site.server("server", port, "--host", "0.0.0.0", *tiny_run_args(runs, rounds=1, min_clients=3))
    wait_for(lambda: "registered device key device-3" in site.log("server"), 90, "the server to register keys")

    outsider_home = tmp_path / "outsider-flwr"
    outsider_home.mkdir()
    (outsider_home / "config.toml").write_text(
        f'[superlink]\ndefault = "outsider"\n\n[superlink.outsider]\naddress = "127.0.0.1:{port}"\n'
        f'root-certificates = "{tmp_path / "certs/ca.crt"}"\n')
    outsider = DevCertificates(tmp_path / "outsider")
    add_node_key(outsider, "device-9")
    app = write_flower_app(tmp_path / "outsider-app", RunConfig())
    for command in (["supernode", "register", str(outsider.node_public_key("device-9")), "outsider"],
                    ["run", str(app), "outsider"]):
        result = subprocess.run([flower_tool("flwr"), *command], env=flower_environment(FLWR_HOME=str(outsider_home)),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode != 0 and "404 Not Found" in result.stdout + result.stderr, result.stdout
    ca = ssl.create_default_context(cafile=str(tmp_path / "certs/ca.crt"))
    with httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=ca) as client:
        for path in ("/v1/control/list-runs", "/v1/control/start-run", "/v1/fleet/../control/list-runs",
                     "/v1/runtime/get-nodes", "/health"):
            assert client.post(path, content=b"").status_code == 404, path

    superlink = next(child for child in psutil.Process(site.started["server"].pid).children(recursive=True)
                     if "flower-superlink" in " ".join(child.cmdline()))
    listening = {c.laddr for c in superlink.net_connections(kind="tcp") if c.status == psutil.CONN_LISTEN}
    assert listening and all(address.ip == "127.0.0.1" for address in listening)
    assert "Public key" not in (tmp_path / "work-server/superlink.log").read_text()  # nothing reached registration

    # SIGTERM (a service manager's stop) ends the waiting server and all it started within seconds, and the run
    # that never completed a round leaves no folder; the same command then starts again in the same work dir
    stopping = time.monotonic()
    site.kill("server", signal.SIGTERM)
    assert time.monotonic() - stopping < 15 and "No round completed" in site.log("server")
    assert not runs.exists() or not list(runs.iterdir())
    site.server("server-again", port, "--host", "0.0.0.0", *tiny_run_args(runs, rounds=1, min_clients=3),
                work_dir="work-server")
    wait_for(lambda: "registered device key device-3" in site.log("server-again"), 90, "the server to start again")

    (tmp_path / "other-operator").mkdir()
    write_operator_keys(tmp_path / "other-operator")
    for number in (1, 2, 3):
        site.device(f"device-{number}", port, tmp_path / f"device-{number}.jsonl",
                    operator="other-operator" if number == 3 else "certs")
    wait_for(lambda: site.started["server-again"].poll() is not None, 420, "the run to finish")
    assert site.started["server-again"].returncode == 0, site.log("server-again")[-3000:]
    refused = [r for r in _rows(_run_dir(runs)) if r["kind"] == "client" and not r["accepted"]]
    assert len(refused) == 1 and "not signed by this device's operator key" in refused[0]["reason"]
    assert "refusing the app bundle" in refused[0]["reason"]  # refused by the shim, before the bundle installed
