"""The README's deployment recipe, run as written on one machine: its `stamen` commands verbatim (the other devices
as the README says, device-1 read as device-2 and device-3), with only a free port for 9091 and test-only settings
appended (the tiny base, devices that leave 5 s after the run). What a newcomer sees is checked too: each device
says one line per round besides its start and end, the server shows the rounds, the run has its report."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from deployment_helpers import Processes, free_port, wait_for

from stamen.shared.run_folder import RunFolder

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = ["--set", "base-model=tiny", "--set", "quantisation=none", "--set", "round-timeout=120"]
DEVICES = ("device-1", "device-2", "device-3")
ROUNDS = 3


def _recipe() -> list[list[str]]:
    """The `stamen` commands of the README's deployment block, each as its arguments."""
    block = re.search(r"Deploy on real devices.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("stamen ")]


RECORD = re.compile(r"^(?:\[[^\]]*\])?\s*(?:INFO|WARNING|ERROR|CRITICAL)\s+(.*)$")
START_AND_END = ("loaded base", "does not answer; waiting", "(the run ended?): leaving")


def _device_lines(said: str) -> list[str]:
    """What a device printed, a record per line (wide columns keep Rich from wrapping), level and time left out."""
    lines = [line.strip() for line in said.splitlines() if line.strip()]
    return [match.group(1).strip() if (match := RECORD.match(line)) else line for line in lines]


def test_the_readme_deployment_recipe_runs_as_written_on_one_machine(tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")  # one line per record in the logs this test reads
    certs, example_data, server, device = _recipe()
    assert (certs[0], example_data[0], server[:2], device[:2]) == ("certs", "example-data", ["server", "start"],
                                                                   ["client", "join"])
    assert "secure-aggregation=true" in server and "device-2 and -3 in two more terminals" in README.read_text()
    port = str(free_port())
    processes = Processes(tmp_path)
    try:
        processes.run(*certs)
        processes.run(*example_data)
        processes.start("server", *(port if arg == "9091" else arg for arg in server), *TINY)
        for name in DEVICES:
            joined = [arg.replace("9091", port).replace("device-1", name) for arg in device]
            processes.start(name, *joined, "--wait-for-server", "5")
        wait_for(lambda: processes.started["server"].poll() is not None, 600, "the recipe's run to finish")
        assert processes.started["server"].returncode == 0, processes.log("server")[-3000:]
        (run_dir,) = (tmp_path / "runs").iterdir()
        rounds = RunFolder(run_dir).summary_record()["rounds"]
        assert [(r["round"], r["clients_accepted"]) for r in rounds] == [(n, len(DEVICES)) for n in (1, 2, 3)]
        assert (run_dir / "report.md").is_file() and list(run_dir.glob("*.png"))
        server_says = processes.log("server")
        assert all(re.search(rf"\bround {n}\b", server_says) for n in (1, 2, 3)), server_says[-3000:]
        for name in DEVICES:
            wait_for(lambda name=name: processes.started[name].poll() is not None, 120, f"{name} to leave")
            said = processes.log(name)
            assert processes.started[name].returncode == 0, said[-3000:]
            assert (tmp_path / "stamen-devices" / name).is_dir()  # each device its own state, no flag needed
            lines = _device_lines(said)
            assert lines[0].startswith(f"Device {name} joining"), said
            rounds_said = [line for line in lines[1:] if line.startswith("round ")]
            assert [line.split(":")[0] for line in rounds_said] == [f"round {n} train" for n in (1, 2, 3)], said
            others = [line for line in lines[1:] if line not in rounds_said]
            assert [next(p for p in START_AND_END if p in line) for line in others] == list(START_AND_END), said
    finally:
        processes.close()
