"""Build a PEFT adapter from an :class:`AdapterSpec`, read its trainable tensors, load them back.

The adapter state is exactly the model's trainable parameters: the base is frozen
(and may be quantised), so base weights and quantisation state can never leak
into an update.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from .config import AdapterSpec
from .lora_modes import LORA_MODES
from .peft_methods import peft_method


def attach_adapter(model: torch.nn.Module, spec: AdapterSpec, seed: int) -> torch.nn.Module:
    """Wrap ``model`` with a fresh adapter whose initial values depend only on ``seed``."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, peft_method(spec.method).peft_config(spec))
    for name, parameter in peft_model.named_parameters():
        if LORA_MODES[spec.aggregation].is_frozen(name):
            parameter.requires_grad_(False)
    trainable = adapter_parameters(peft_model)
    if not trainable:
        raise ValueError(f"adapter {spec.method} on targets {spec.targets} matched no module of the base")
    return peft_model


def adapter_parameters(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    """The trainable parameters: the adapter, and nothing of the frozen base."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@contextmanager
def base_alone(model: torch.nn.Module) -> Iterator[None]:
    """The frozen base with every adapter disabled, and the adapter as it was afterwards.

    peft's ``disable_adapter`` marks every adapter tensor trainable when it exits, which would
    unfreeze what must stay frozen (ffa's shared A), so the trainable set is restored here."""
    trainable = {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    try:
        with model.disable_adapter():
            yield
    finally:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(name in trainable)


def input_logits(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """The logits at the input's own positions: prompt tuning and p-tuning put their virtual tokens' first."""
    return logits[:, -input_ids.size(1):]


def active_peft_type(model: torch.nn.Module) -> str:
    """The active adapter's PEFT type name ("LORA", "IA3", ...); DoRA is a LoRA with ``use_dora``."""
    config = model.peft_config[model.active_adapter]
    return str(getattr(config.peft_type, "value", config.peft_type))


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A float32 CPU copy of the adapter tensors."""
    return {name: p.detach().to("cpu", torch.float32).clone() for name, p in adapter_parameters(model).items()}


def shared_state(state: Mapping[str, torch.Tensor], spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """The part of an adapter state that goes to the server (all of it except a personal part)."""
    mode = LORA_MODES[spec.aggregation]
    return {k: v for k, v in state.items() if not mode.is_personal(k)}


def load_adapter_state(
    model: torch.nn.Module, state: Mapping[str, np.ndarray | torch.Tensor], partial: bool = False
) -> None:
    """Overwrite adapter tensors with ``state``: all of them, or with ``partial`` a subset."""
    params = adapter_parameters(model)
    if partial and set(state) <= set(params):
        params = {k: params[k] for k in state}
    if set(params) != set(state):
        missing, extra = sorted(set(params) - set(state)), sorted(set(state) - set(params))
        raise KeyError(f"adapter state does not match the model: missing {missing[:3]}, unexpected {extra[:3]}")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(torch.as_tensor(state[name]).to(param.device, param.dtype))
