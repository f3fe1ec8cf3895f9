"""Derived files: processes asking for the same one at once compute it once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

from stamen.shared.cache import cached_json


def _ask(path: str, log: str) -> None:
    def compute() -> dict:
        with open(log, "a") as handle:
            handle.write("computed\n")
        time.sleep(1.0)  # long enough that the other process asks while this one computes
        return {"loss": 1.5}

    assert cached_json(Path(path), compute) == {"loss": 1.5}


def test_processes_asking_at_once_compute_a_cached_file_once(tmp_path):
    path, log = tmp_path / "probe.json", tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    askers = [context.Process(target=_ask, args=(str(path), str(log))) for _ in range(3)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(timeout=60)
    assert [asker.exitcode for asker in askers] == [0, 0, 0]
    assert log.read_text() == "computed\n" and path.is_file()
    assert cached_json(path, lambda: {"loss": 9.9}) == {"loss": 1.5}  # later callers read the file
