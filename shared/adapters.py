"""Build a PEFT adapter from an :class:`AdapterSpec`, read its trainable tensors, load them back.

The adapter state is exactly the model's trainable parameters: the base is frozen
(and may be quantised), so base weights and quantisation state can never leak
into an update.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch

from .config import AdapterSpec
from .lora_layers import is_frozen, is_personal

# Module names that IA3 treats as feed-forward (scaling the input, not the output).
_FEEDFORWARD_MODULES = {"down_proj", "up_proj", "gate_proj", "fc1", "fc2", "c_fc", "mlp"}


def peft_config(spec: AdapterSpec):
    """The PEFT config for ``spec``: LoRA, DoRA, IA3, or any PEFT type taking targets."""
    from peft import IA3Config, LoraConfig, TaskType
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

    targets = list(spec.targets)
    if spec.method in ("lora", "dora"):
        return LoraConfig(
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=targets,
            use_dora=spec.method == "dora",
            task_type=TaskType.CAUSAL_LM,
        )
    if spec.method == "ia3":
        feedforward = [t for t in targets if t in _FEEDFORWARD_MODULES]
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, task_type=TaskType.CAUSAL_LM)
    config_class = PEFT_TYPE_TO_CONFIG_MAPPING.get(spec.method.upper())
    if config_class is None:
        raise ValueError(f"unknown adapter method '{spec.method}'; use lora, dora, ia3 or a PEFT type name")
    accepted = inspect.signature(config_class).parameters
    offered = {"r": spec.rank, "alpha": spec.alpha, "lora_alpha": spec.alpha, "target_modules": targets}
    return config_class(task_type=TaskType.CAUSAL_LM, **{k: v for k, v in offered.items() if k in accepted})


def attach_adapter(model: torch.nn.Module, spec: AdapterSpec, seed: int) -> torch.nn.Module:
    """Wrap ``model`` with a fresh adapter whose initial values depend only on ``seed``."""
    from peft import get_peft_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        peft_model = get_peft_model(model, peft_config(spec))
    for name, parameter in peft_model.named_parameters():
        if is_frozen(name, spec.aggregation):
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


def adapter_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A float32 CPU copy of the adapter tensors."""
    return {name: p.detach().to("cpu", torch.float32).clone() for name, p in adapter_parameters(model).items()}


def shared_state(state: Mapping[str, torch.Tensor], spec: AdapterSpec) -> dict[str, torch.Tensor]:
    """The part of an adapter state that goes to the server (all of it except a personal part)."""
    return {k: v for k, v in state.items() if not is_personal(k, spec.aggregation)}


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
