"""Per-client state kept on the device across rounds and sessions, never sent to the server.

Each save is tagged with its server round and written atomically; a load asks for
the newest state from *before* a round. So if a round is interrupted and replayed
(server crash and resume), the client starts it from the same state as the first time.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors.numpy import load, save

from stamen.shared.atomic import atomic_write_bytes

KEEP_VERSIONS = 2
PERSONAL = "personal"  # the adapter part a device keeps and never sends (e.g. fedsa's B)


class ClientStateStore:
    """Named sets of arrays in one client's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, name: str, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        atomic_write_bytes(self._path(name, server_round), save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
        for _, old in self._versions(name)[:-KEEP_VERSIONS]:
            old.unlink(missing_ok=True)

    def load(self, name: str, before_round: int) -> dict[str, np.ndarray] | None:
        earlier = [path for r, path in self._versions(name) if r < before_round]
        return load(earlier[-1].read_bytes()) if earlier else None

    def _path(self, name: str, server_round: int) -> Path:
        return self.folder / f"{name}-r{server_round:06d}.safetensors"

    def _versions(self, name: str) -> list[tuple[int, Path]]:
        pattern = re.compile(rf"{re.escape(name)}-r(\d+)\.safetensors$")
        found = [(int(m.group(1)), p) for p in self.folder.glob(f"{name}-r*.safetensors") if (m := pattern.match(p.name))]
        return sorted(found)


def client_folder(root: Path, client_name: str) -> Path:
    """A filesystem-safe folder for a client name such as ``spanish/food`` or ``computers+money``."""
    return root / re.sub(r"[^A-Za-z0-9_.+-]", "_", client_name)
