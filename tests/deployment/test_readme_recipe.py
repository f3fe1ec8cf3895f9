"""The README's deployment recipe, run as written on one machine: its `stamen` commands verbatim (the second device
as the README says, device-1 read as device-2), with only a free port for 9091 and test-only settings appended
(the tiny base, no evaluation, devices that leave 5 s after the run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from deployment_helpers import Processes, free_port, wait_for

from stamen.shared.run_folder import RunFolder

README = Path(__file__).resolve().parents[2] / "README.md"
TINY = ["--set", "base-model=tiny", "--set", "quantisation=none", "--set", "fraction-evaluate=0.0",
        "--set", "round-timeout=120"]


def _recipe() -> list[list[str]]:
    """The `stamen` commands of the README's deployment block, each as its arguments."""
    block = re.search(r"Deploy on real devices.*?```bash\n(.*?)```", README.read_text(), re.S).group(1)
    lines = [line.split("#")[0].strip() for line in block.replace("\\\n", " ").splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("stamen ")]


def test_the_readme_deployment_recipe_runs_as_written_on_one_machine(tmp_path):
    certs, example_data, server, device = _recipe()
    assert (certs[0], example_data[0], server[:2], device[:2]) == ("certs", "example-data", ["server", "start"],
                                                                   ["client", "join"])
    assert "and device-2 in a third terminal" in README.read_text()
    port = str(free_port())
    processes = Processes(tmp_path)
    try:
        processes.run(*certs)
        processes.run(*example_data)
        processes.start("server", *(port if arg == "9091" else arg for arg in server), *TINY)
        for name in ("device-1", "device-2"):
            joined = [arg.replace("9091", port).replace("device-1", name) for arg in device]
            processes.start(name, *joined, "--wait-for-server", "5")
        wait_for(lambda: processes.started["server"].poll() is not None, 420, "the recipe's run to finish")
        assert processes.started["server"].returncode == 0, processes.log("server")[-3000:]
        (run_dir,) = (tmp_path / "runs").iterdir()
        rounds = RunFolder(run_dir).summary_record()["rounds"]
        assert [(r["round"], r["clients_accepted"]) for r in rounds] == [(1, 2), (2, 2), (3, 2)]
        for name in ("device-1", "device-2"):
            wait_for(lambda name=name: processes.started[name].poll() is not None, 120, f"{name} to leave")
            assert processes.started[name].returncode == 0, processes.log(name)[-3000:]
            assert (tmp_path / "stamen-devices" / name).is_dir()  # each device its own state, no flag needed
    finally:
        processes.close()
