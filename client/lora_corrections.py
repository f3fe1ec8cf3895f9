"""Apply the server's exact-LoRA corrections C: each adapted layer outputs base + LoRA + x C^T.

The corrections stay a separate frozen term (a forward hook per layer): they are
never merged into the base, which may be quantised.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from stamen.shared.lora_layers import LoraLayer
from stamen.shared.wire import AdapterSchema


class LayerCorrections:
    """Zero-initialised correction buffers hooked onto the adapted layers of ``model``."""

    def __init__(self, model: torch.nn.Module, layers: list[LoraLayer], wire_dtype: str) -> None:
        modules = dict(model.named_modules())
        self.buffers: dict[str, torch.Tensor] = {}
        for layer in layers:
            module = modules[layer.module]
            weight = module.get_base_layer().weight
            out_features, in_features = module.out_features, module.in_features
            buffer = torch.zeros(out_features, in_features, device=weight.device, dtype=torch.float32)
            self.buffers[layer.module] = buffer
            module.register_forward_hook(_add_correction(buffer))
        self.schema = AdapterSchema({m: tuple(b.shape) for m, b in self.buffers.items()}, wire_dtype)

    def set(self, corrections: Mapping[str, np.ndarray] | None) -> None:
        """Use ``corrections`` (validated against ``schema``) or, with None, none at all."""
        with torch.no_grad():
            for name, buffer in self.buffers.items():
                if corrections is None:
                    buffer.zero_()
                else:
                    buffer.copy_(torch.as_tensor(corrections[name]))


def _add_correction(buffer: torch.Tensor):
    def hook(module, args, output):
        return output + torch.nn.functional.linear(args[0].to(buffer.dtype), buffer).to(output.dtype)

    return hook
