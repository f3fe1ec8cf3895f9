"""The server's state after each completed round, in one file written atomically.

One safetensors file holds the global adapter and the rule's arrays; its metadata
holds the round, the sampling RNG state and how far ``metrics.jsonl`` had got. It is
written beside the old one and renamed over it, so a crash at any moment leaves the
last completed round's checkpoint intact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load, save

from stamen.shared.atomic import atomic_write_bytes
from stamen.shared.protocol import CORRECTIONS
from stamen.shared.run_folder import RunFolder
from stamen.shared.user_errors import UserError

_GLOBAL, _RULE = "global/", "rule/"
_CORRECTIONS = f"{_RULE}{CORRECTIONS}/"


@dataclass
class ServerState:
    round: int
    global_adapter: dict[str, np.ndarray]
    rule_state: dict[str, Any]  # the fold's server state: rule arrays, LoRA corrections
    python_rng: Any
    metrics_offset: int


def save_checkpoint(run_dir: Path, state: ServerState) -> None:
    """Replace the run's checkpoint, and keep this round's global adapter for export."""
    tensors = {_GLOBAL + k: np.ascontiguousarray(v) for k, v in state.global_adapter.items()}
    tensors.update({_RULE + k: np.ascontiguousarray(v) for k, v in state.rule_state.items()})
    meta = {"round": state.round, "python_rng": state.python_rng, "metrics_offset": state.metrics_offset}
    exportable = {k: v for k, v in tensors.items() if k.startswith((_GLOBAL, _CORRECTIONS))}
    atomic_write_bytes(RunFolder(run_dir).rounds / f"round-{state.round}.safetensors", save(exportable))
    atomic_write_bytes(RunFolder(run_dir).checkpoint, save(tensors, metadata={"stamen": json.dumps(meta)}))


class CheckpointError(UserError, RuntimeError):
    """A run's saved state is missing or cannot be read; the message names the file and what still can be used."""


def load_checkpoint(run_dir: Path) -> ServerState | None:
    """The last completed round's state, or None if the run has not finished a round."""
    path = RunFolder(run_dir).checkpoint
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            meta = json.loads(handle.metadata()["stamen"])
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not iterable)
        return ServerState(
            round=meta["round"],
            global_adapter={k[len(_GLOBAL) :]: v for k, v in tensors.items() if k.startswith(_GLOBAL)},
            rule_state={k[len(_RULE) :]: v for k, v in tensors.items() if k.startswith(_RULE)},
            python_rng=_as_rng_state(meta["python_rng"]),
            metrics_offset=meta["metrics_offset"],
        )
    except Exception as error:  # truncated or overwritten by something else: any failure to read it
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {str(error)[:200]}), so the run "
                              f"cannot resume from it. {_saved_rounds(run_dir)}") from None


def load_round(run_dir: Path, server_round: int) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The global adapter and the exact-LoRA corrections (empty if none) after ``server_round``."""
    path = RunFolder(run_dir).rounds / f"round-{server_round}.safetensors"
    if not path.is_file():
        raise CheckpointError(f"{run_dir} has no saved round {server_round}. {_saved_rounds(run_dir)}")
    try:
        tensors = load(path.read_bytes())
    except Exception as error:
        raise CheckpointError(f"{path} cannot be read ({type(error).__name__}: {str(error)[:200]}). "
                              f"{_saved_rounds(run_dir)}") from None
    adapter = {k[len(_GLOBAL) :]: v for k, v in tensors.items() if k.startswith(_GLOBAL)}
    corrections = {k[len(_CORRECTIONS) :]: v for k, v in tensors.items() if k.startswith(_CORRECTIONS)}
    return adapter, corrections


def saved_rounds(run_dir: Path) -> list[int]:
    """The rounds whose global adapter is saved under ``rounds/``, oldest first."""
    return sorted(int(p.stem.split("-")[1]) for p in RunFolder(run_dir).rounds.glob("round-*.safetensors"))


def last_round(run_dir: Path) -> int:
    """The newest round saved under ``rounds/``."""
    RunFolder(run_dir).require_run()  # a folder that is not a run is named as such, not as one with no rounds
    rounds = saved_rounds(run_dir)
    if not rounds:
        raise CheckpointError(f"{run_dir} has no completed round yet: nothing to export or resume from")
    return rounds[-1]


def _saved_rounds(run_dir: Path) -> str:
    """What a person can still use when a file is missing or corrupt."""
    rounds = saved_rounds(run_dir)
    if not rounds:
        return "No round of this run was saved."
    return (f"Saved adapters: rounds {', '.join(map(str, rounds))}; 'stamen export {run_dir} --round {rounds[-1]}' "
            f"writes round {rounds[-1]} as a PEFT folder.")


def _as_rng_state(saved: list) -> tuple:
    """``random.getstate()`` went through JSON as lists; restore its tuple shape."""
    version, internal, gauss = saved
    return (version, tuple(internal), gauss)

