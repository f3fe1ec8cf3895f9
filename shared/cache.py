"""Where Stamen keeps derived files: dequantised bases, quality checks, generated sets."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from .atomic import atomic_write_text


def cache_dir(*parts: str) -> Path:
    """``$STAMEN_CACHE`` (default ``~/.cache/stamen``) joined with ``parts``, created."""
    root = Path(os.environ.get("STAMEN_CACHE", Path.home() / ".cache" / "stamen"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_json(path: Path, compute: Callable[[], Any], wait: bool = True) -> Any:
    """The JSON in ``path``, or ``compute()`` written there first. Processes asking for the same file take turns
    (a lock beside it): the first computes, the others wait and read, instead of all computing at once.
    With ``wait=False`` a file another process is computing raises :class:`filelock.Timeout` at once."""
    with FileLock(f"{path}.lock", timeout=-1 if wait else 0):
        if path.is_file():
            return json.loads(path.read_text())
        value = compute()
        atomic_write_text(path, json.dumps(value))
        return value


def cached_json_parts(parts: dict[Path, Callable[[], Any]]) -> dict[Path, Any]:
    """:func:`cached_json` for several files, taking first the ones no other process is computing, then waiting for
    the rest: processes that ask for the same parts at once compute them side by side instead of in turn."""
    values = {}
    for path, compute in parts.items():
        try:
            values[path] = cached_json(path, compute, wait=False)
        except Timeout:
            continue  # another process is on it: do the next part, come back for this one
    for path, compute in parts.items():
        if path not in values:
            values[path] = cached_json(path, compute)
    return {path: values[path] for path in parts}


def keep_newest(folder: Path, pattern: str, count: int) -> list[Path]:
    """Delete all but the ``count`` newest cached files matching ``pattern`` in ``folder`` (a cache keyed by
    something that keeps changing, such as an adapter's hash, would otherwise grow without end); a file another
    process holds is left for a later call. Returns the files deleted."""
    files = sorted(folder.glob(pattern), key=lambda path: path.stat().st_mtime, reverse=True)
    deleted = []
    for path in files[count:]:
        try:
            with FileLock(f"{path}.lock", timeout=0):
                path.unlink(missing_ok=True)
                Path(f"{path}.lock").unlink(missing_ok=True)
        except Timeout:
            continue
        deleted.append(path)
    return deleted
