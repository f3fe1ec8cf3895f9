"""The local optimiser's state as named arrays, so a device can keep it across rounds.

AdamW's moment estimates describe the device's own loss surface; with
``keep-optimizer-state`` they are stored with the client's other private state and the
next round continues from them instead of restarting its moments from zero.
"""

from __future__ import annotations

import numpy as np
import torch

MOMENTS = ("exp_avg", "exp_avg_sq")


def export_state(optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter]) -> dict[str, np.ndarray]:
    """``{"<param>/exp_avg", "<param>/exp_avg_sq", "<param>/step"}`` for every parameter with state."""
    arrays = {}
    for name, parameter in named.items():
        state = optimizer.state.get(parameter)
        if not state:
            continue
        for moment in MOMENTS:
            arrays[f"{name}/{moment}"] = state[moment].detach().to("cpu", torch.float32).numpy()
        arrays[f"{name}/step"] = np.asarray([float(state["step"])], dtype=np.float32)
    return arrays


def import_state(
    optimizer: torch.optim.Optimizer, named: dict[str, torch.nn.Parameter], arrays: dict[str, np.ndarray]
) -> None:
    """Load what :func:`export_state` wrote; parameters it does not name start fresh."""
    for name, parameter in named.items():
        if f"{name}/step" not in arrays:
            continue
        optimizer.state[parameter] = {
            "step": torch.tensor(arrays[f"{name}/step"].item()),
            **{moment: torch.from_numpy(arrays[f"{name}/{moment}"]).to(parameter.device, parameter.dtype)
               for moment in MOMENTS},
        }
