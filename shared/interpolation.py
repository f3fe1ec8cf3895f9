"""Weight-space interpolation between the frozen base and the adapted model (WiSE-FT, Wortsman et al. 2022).

The model a device uses can be base + alpha x what its adapter adds: part of the personal gain for a model
closer to the base, at no training cost. Two rules choose alpha on the device: the least alpha keeping a share
of the held-out gain, and the largest alpha keeping a share of what the base knew. Exact for LoRA (B is
scaled, and B A is linear in B) and for IA3 (its learnt scales l move to 1 + alpha (l - 1), so W diag(l)
interpolates linearly); DoRA (its magnitude is renormalised) and other types are refused, not approximated.
The scaled tensors are the adapter's own, so a PEFT or GGUF export of the model carries alpha with it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .adapters import active_peft_type
from .user_errors import UserError

ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0)  # the grid a device chooses from
FINE_STEPS = 16  # the retention rule refines to sixteenths below an alpha that forgot
SCALED = {"LORA": ("lora_B.", "lora_embedding_B."), "IA3": ("ia3_l.",)}  # tensors that carry the delta, by type


class InterpolationError(UserError, ValueError):
    """The adapter is of a type with no exact interpolation toward the base."""


def delta_tensors(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The adapter tensors that carry what it adds to the base (LoRA's B, IA3's scales)."""
    kind = active_peft_type(model)
    if kind not in SCALED or getattr(model.peft_config[model.active_adapter], "use_dora", False):
        raise InterpolationError(f"no exact interpolation toward the base for {'DoRA' if kind == 'LORA' else kind} "
                                 "adapters (LoRA and IA3 have one): leave wise-alpha at 1")
    return {name: p for name, p in model.named_parameters() if any(part in name for part in SCALED[kind])}


def trained_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of :func:`delta_tensors` as they stand: what :func:`interpolate_adapter` scales from."""
    return {name: tensor.detach().clone() for name, tensor in delta_tensors(model).items()}


def interpolate_adapter(model: torch.nn.Module, alpha: float, trained: Mapping[str, torch.Tensor]) -> None:
    """Set ``model``'s adapter to base + ``alpha`` x the adapter ``trained`` (:func:`delta_tensors`' values)."""
    if not 0.0 <= alpha <= 1.0:
        raise InterpolationError(f"alpha must be in [0, 1], got {alpha}")
    identity = 1.0 if active_peft_type(model) == "IA3" else 0.0
    with torch.no_grad():
        for name, tensor in delta_tensors(model).items():
            tensor.copy_(identity + alpha * (trained[name].to(tensor) - identity))


def smallest_alpha_keeping(loss_at: Callable[[float], float], keep: float) -> tuple[float, dict[float, float]]:
    """The smallest alpha of :data:`ALPHAS` whose held-out loss keeps ``keep`` of the full adapter's gain over
    the base (alpha 0); 0 when the adapter does not lower the loss at all. Returns it and the losses measured."""
    losses = {0.0: loss_at(0.0), 1.0: loss_at(1.0)}
    gain = losses[0.0] - losses[1.0]
    if gain <= 0:
        return 0.0, losses
    for alpha in ALPHAS[1:-1]:
        losses[alpha] = loss_at(alpha)
        if losses[0.0] - losses[alpha] >= keep * gain:
            return alpha, losses
    return 1.0, losses


def largest_alpha_retaining(
    retention_at: Callable[[float], float], keep: float, at_most: float = 1.0
) -> tuple[float, dict[float, float]]:
    """The largest alpha, at most ``at_most``, at which ``retention_at`` (the share of facts the base knew that
    the model still answers; 1 at alpha 0, the base itself) is at least ``keep``: the model furthest from the
    base that still knows what the base knew. Scans :data:`ALPHAS` down from ``at_most`` (a model that forgot
    nothing costs one measurement), then the sixteenths between the alpha found and the one above it that
    forgot (retention falls steeply near the base, where a quarter step can cost most of the gain). Returns it
    and the retentions measured."""
    retained: dict[float, float] = {}

    def kept(alpha: float) -> bool:
        retained[alpha] = retention_at(alpha)
        return retained[alpha] >= keep

    above = None
    for alpha in [at_most, *sorted((a for a in ALPHAS if 0 < a < at_most), reverse=True), 0.0]:
        if alpha == 0.0 or kept(alpha):
            break
        above = alpha
    if above is not None:
        finer = sorted((i / FINE_STEPS for i in range(1, FINE_STEPS) if alpha < i / FINE_STEPS < above), reverse=True)
        alpha = next((candidate for candidate in finer if kept(candidate)), alpha)
    return alpha, retained
