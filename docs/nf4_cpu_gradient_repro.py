"""Minimal reproduction (bitsandbytes 0.50.2, torch 2.13, CPU): after one inference-mode forward, a
``Linear4bit`` layer passes no gradient on a CPU with AVX512-BF16.

``Linear4bit.forward`` repacks its weight for the fused CPU kernel the first time it runs with
``training=False`` and an input that does not require grad (only where ``has_avx512bf16()``);
from then on ``matmul_4bit`` sends every input, in training too, to ``gemv_4bit``, which has no
autograd kernel. ``x`` stands for anything trainable below the layer (a LoRA adapter).

    python docs/nf4_cpu_gradient_repro.py   # exit status 1 where the gradient is lost
"""

import sys

import bitsandbytes as bnb
import torch
from bitsandbytes.functional import has_avx512bf16

torch.manual_seed(0)
layer = bnb.nn.Linear4bit(256, 256, bias=False, compute_dtype=torch.float32, quant_type="nf4")
layer.weight = bnb.nn.Params4bit(torch.randn(256, 256), requires_grad=False, quant_type="nf4")
layer = layer.to("cpu")  # quantises the weight
x = torch.randn(4, 256, requires_grad=True)


def gradient_reaches_input() -> bool:
    x.grad = None
    layer.train()
    layer(x).sum().backward()
    return x.grad is not None and bool(x.grad.any())


before = gradient_reaches_input()
layer.eval()
with torch.no_grad():
    layer(x.detach())  # an evaluation
after = gradient_reaches_input()
print(
    f"has_avx512bf16={bool(has_avx512bf16())} "
    f"repacked={getattr(layer.weight.quant_state, 'packing_format_for_cpu', False)} "
    f"gradient before evaluation={before} after={after}"
)
sys.exit(0 if after else 1)
