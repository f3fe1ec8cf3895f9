"""A real deployment whose ServerApp lies (tests/deployment/lying_server_app.py): SuperLink, Fleet gateway and three
devices started as `stamen client join` starts them, each holding the operator's key and its node key. Every device
refuses what it must, and an honest run on the same server afterwards completes."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from deployment_helpers import Processes, free_port

from stamen.server import deployment as deploy
from stamen.shared.config import RunConfig
from stamen.shared.dev_certs import DevCertificates
from stamen.shared.flower_tools import flower_tool
from stamen.shared.run_folder import RunFolder
from stamen.shared.run_signature import sign_run
from stamen.shared.secagg_identity import roster_of

HERE = Path(__file__).resolve().parent


class LyingDeployment(deploy.ServerDeployment):
    """The server's processes, with the lying ServerApp importable by the ServerApp process Flower starts and the
    other run's signed config where it looks."""

    @property
    def other_config(self) -> Path:
        return self.work_dir / "other-signed-config.json"

    def environment(self) -> dict[str, str]:
        path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        return {**super().environment(), "PYTHONPATH": path, "STAMEN_OTHER_SIGNED_CONFIG": str(self.other_config)}


def test_devices_refuse_every_lie_of_a_real_server_and_then_take_part_in_an_honest_run(tmp_path):
    site = Processes(tmp_path)
    site.run("certs", "certs", "--node", "device-1", "--node", "device-2", "--node", "device-3")
    site.run("example-data", ".", "--devices", "3")
    certs = DevCertificates(tmp_path / "certs")
    port, runs = free_port(), tmp_path / "runs"
    setup = LyingDeployment(deploy.TlsFiles(certs.ca_certificate, certs.server_certificate, certs.server_key),
                            "127.0.0.1", port, tmp_path / "work", free_port())
    settings = {"base-model": "tiny", "quantisation": "none", "fraction-evaluate": 0.0, "min-clients": 3,
                "round-timeout": 120, "secagg-timeout": 60, "run-dir": str(runs), "secure-aggregation": True,
                "secagg-roster": ",".join(roster_of(certs.node_public_keys()))}
    lying = sign_run(RunConfig().replace(**settings, **{"run-id": "lying", "num-server-rounds": 5}), certs.operator_key)
    other = sign_run(RunConfig().replace(**{**settings, "secure-aggregation": False, "run-id": "another"}),
                     certs.operator_key)  # the same operator, another run: secure aggregation off
    superlink, gateway = deploy.start_superlink(setup), None
    setup.other_config.write_text(json.dumps(other.to_flat()))
    try:
        gateway = deploy.start_gateway(setup, certs.node_public_keys())
        deploy.write_connection(setup)
        deploy.register_nodes(setup, certs.node_public_keys())
        for number in (1, 2, 3):
            site.device(f"device-{number}", port, tmp_path / f"device-{number}.jsonl")
        app = deploy.write_flower_app(tmp_path / "lying-app", lying, serverapp="lying_server_app:app")
        result = subprocess.run([flower_tool("flwr"), "run", str(app), deploy.CONNECTION, "--stream"],
                                env=setup.environment(), cwd=setup.work_dir, capture_output=True, text=True,
                                timeout=600)
        log = result.stdout + result.stderr
        assert result.returncode == 0 and (runs / "lying").is_dir(), log[-4000:]
        rows = RunFolder(runs / "lying").rows()
        rounds = {row["round"]: row for row in rows if row["kind"] == "round"}
        assert result.returncode == 0 and sorted(rounds) == [1, 2, 3, 4, 5], log[-4000:]
        assert [rounds[n]["clients_accepted"] for n in (1, 2, 3, 4, 5)] == [0, 3, 0, 0, 0], log[-4000:]
        assert log.count("keys are not signed by a roster device") == 3  # 1: keys of the server's own
        reasons = {n: [row.get("reason", "") for row in rows if row["kind"] == "client" and row["round"] == n]
                   for n in rounds}
        assert all("round 2 of lying/train was released already" in reason for reason in reasons[3]), reasons[3]
        assert log.count("fields this protocol does not have: ['noise-std']") == 3  # 4: noise switched off
        assert len(reasons[5]) == 3 and all("signed for another run" in reason for reason in reasons[5]), reasons[5]
        for number in (1, 2, 3):  # each device's ledger: only round 2 released
            ledger = json.loads((tmp_path / f"state-device-{number}/release-ledger.json").read_text())
            assert ledger["sessions"]["lying/train"] == {"round": 4, "released": False, "noise": 0.0}

        honest = sign_run(RunConfig().replace(**settings, **{"run-id": "honest", "num-server-rounds": 1}),
                          certs.operator_key)
        deploy.run_federation_on(setup, honest)
        (row,) = [row for row in RunFolder(runs / "honest").rows() if row["kind"] == "round"]
        assert row["clients_accepted"] == 3
    finally:
        if gateway:
            gateway.stop()
        deploy.stop(superlink)
        site.close()
