"""Derived files: processes asking for the same one at once compute it once."""

from __future__ import annotations

import multiprocessing
import os
import time
from pathlib import Path

from filelock import FileLock

from stamen.shared.cache import cached_json, cached_json_parts, keep_newest


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


def _ask_parts(folder: str, log: str, start) -> None:
    def part(name: str):
        def compute() -> dict:
            with open(log, "a") as handle:
                handle.write(f"{name} {os.getpid()}\n")
            time.sleep(2.0)  # long enough that the other process asks while this one computes
            return {name: 1.0}
        return compute

    start.wait(timeout=60)
    paths = {Path(folder) / f"{name}.json": part(name) for name in ("retention", "general-text")}
    assert list(cached_json_parts(paths).values()) == [{"retention": 1.0}, {"general-text": 1.0}]


def test_processes_asking_for_the_same_parts_at_once_compute_them_side_by_side(tmp_path):
    log = tmp_path / "log.txt"
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(2)
    askers = [context.Process(target=_ask_parts, args=(str(tmp_path), str(log), start)) for _ in range(2)]
    for asker in askers:
        asker.start()
    for asker in askers:
        asker.join(timeout=60)
    assert [asker.exitcode for asker in askers] == [0, 0]
    computed = dict(line.split() for line in log.read_text().splitlines())
    assert sorted(computed) == ["general-text", "retention"]  # each part once
    assert len(set(computed.values())) == 2  # by different processes: neither waited for the other's part


def test_a_cache_keyed_by_changing_content_keeps_only_its_newest_files(tmp_path):
    for i in range(5):
        cached_json(tmp_path / f"model-{i}.json", lambda i=i: {"loss": i})
        os.utime(tmp_path / f"model-{i}.json", (1000 + i, 1000 + i))
    cached_json(tmp_path / "base-alone.json", lambda: {"loss": 0.0})
    with FileLock(tmp_path / "model-0.json.lock"):  # another process is reading the oldest: it stays for now
        deleted = keep_newest(tmp_path, "model-*.json", 2)
    assert sorted(path.name for path in deleted) == ["model-1.json", "model-2.json"]
    assert sorted(path.name for path in tmp_path.glob("*.json")) == [
        "base-alone.json", "model-0.json", "model-3.json", "model-4.json"]
    assert not (tmp_path / "model-1.json.lock").exists()
    assert [path.name for path in keep_newest(tmp_path, "model-*.json", 2)] == ["model-0.json"]
