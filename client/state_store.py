"""Per-client state kept on the device across rounds and sessions, never sent to the server.

Each save is tagged with its server round and written atomically; a load asks for
the newest state from *before* a round. So if a round is interrupted and replayed
(server crash and resume), the client starts it from the same state as the first time.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load, save

from stamen.shared.atomic import atomic_write_bytes, atomic_write_text

KEEP_VERSIONS = 2
PERSONAL = "personal"  # the adapter part a device keeps and never sends (e.g. fedsa's B)
OPTIMIZER = "optimizer"  # the local optimiser's moments (keep-optimizer-state)


class ClientStateStore:
    """Named sets of arrays (safetensors) or JSON documents in one client's folder."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def save(self, name: str, server_round: int, arrays: dict[str, np.ndarray]) -> None:
        atomic_write_bytes(self._path(name, server_round, ".safetensors"),
                           save({k: np.ascontiguousarray(v) for k, v in arrays.items()}))
        self._prune(name, ".safetensors")

    def load(self, name: str, before_round: int) -> dict[str, np.ndarray] | None:
        earlier = self._before(name, before_round, ".safetensors")
        return load(earlier.read_bytes()) if earlier else None

    def save_document(self, name: str, server_round: int, document: dict[str, Any]) -> None:
        atomic_write_text(self._path(name, server_round, ".json"), json.dumps(document))
        self._prune(name, ".json")

    def load_document(self, name: str, before_round: int) -> dict[str, Any] | None:
        earlier = self._before(name, before_round, ".json")
        return json.loads(earlier.read_text()) if earlier else None

    def _path(self, name: str, server_round: int, suffix: str) -> Path:
        return self.folder / f"{name}-r{server_round:06d}{suffix}"

    def _before(self, name: str, before_round: int, suffix: str) -> Path | None:
        earlier = [path for r, path in self._versions(name, suffix) if r < before_round]
        return earlier[-1] if earlier else None

    def _prune(self, name: str, suffix: str) -> None:
        for _, old in self._versions(name, suffix)[:-KEEP_VERSIONS]:
            old.unlink(missing_ok=True)

    def _versions(self, name: str, suffix: str) -> list[tuple[int, Path]]:
        pattern = re.compile(rf"{re.escape(name)}-r(\d+){re.escape(suffix)}$")
        found = [(int(m.group(1)), p) for p in self.folder.glob(f"{name}-r*{suffix}") if (m := pattern.match(p.name))]
        return sorted(found)


def client_folder(root: Path, client_name: str) -> Path:
    """A filesystem-safe folder for a client name such as ``spanish/food`` or ``computers+money``."""
    return root / re.sub(r"[^A-Za-z0-9_.+-]", "_", client_name)
