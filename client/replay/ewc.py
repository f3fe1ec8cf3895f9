"""Elastic weight consolidation on the adapter (Kirkpatrick et al. 2017), for comparison with replay.

The penalty (lambda/2) * sum_i F_i (w_i - w*_i)^2 holds each adapter parameter near
the adapter the round started from (w*), in proportion to how much the replayed
examples' loss depends on it (F, the diagonal empirical Fisher, estimated from
mini-batch gradients and scaled to mean 1 so lambda reads like FedProx's mu).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from stamen.shared.adapters import adapter_parameters
from stamen.shared.examples import Example, collate, encode_example
from stamen.shared.training import GradientCorrection

from .sources import ReplayInputs, ReplaySource, register

FISHER_EXAMPLES = 8  # a rough diagonal is enough to weight the penalty; each batch costs a backward pass


def fisher_diagonal(
    model, tokenizer, examples: list[Example], max_len: int, batch_size: int
) -> dict[str, torch.Tensor]:
    """Mean squared loss gradient per adapter parameter over (up to ``FISHER_EXAMPLES``) examples."""
    named = adapter_parameters(model)
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in named.items()}
    encoded = [encode_example(tokenizer, e, max_len) for e in examples[:FISHER_EXAMPLES]]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()  # no dropout: the gradient of the loss itself
    batches = range(0, len(encoded), batch_size)
    for start in batches:
        batch = {k: v.to(device) for k, v in collate(encoded[start:start + batch_size], tokenizer.pad_token_id).items()}
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        for name, p in named.items():
            if p.grad is not None:
                fisher[name] += p.grad.detach().float() ** 2 / len(batches)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    mean = torch.cat([f.flatten() for f in fisher.values()]).mean()
    return {name: f / mean for name, f in fisher.items()} if mean > 0 else fisher


def ewc_penalty(
    strength: float, fisher: Mapping[str, torch.Tensor], anchor: Mapping[str, torch.Tensor]
) -> GradientCorrection:
    """Gradient of the penalty, lambda * F * (w - w*), added to every adapter gradient."""

    def correct(params: Mapping[str, torch.nn.Parameter]) -> None:
        for name, p in params.items():
            p.grad.add_(fisher[name].to(p.device, p.dtype) * (p.detach() - anchor[name].to(p.device, p.dtype)),
                        alpha=strength)

    return correct


@register("ewc")
class EwcReplay(ReplaySource):
    """No examples mixed in: a penalty holding the adapter near the received one, weighted by the
    Fisher information of the reservoir's examples (nothing while the reservoir is empty)."""

    uses_buffer = True

    @classmethod
    def replay(cls, inputs: ReplayInputs) -> tuple[list[Example], tuple[GradientCorrection, ...]]:
        strength, training = inputs.config.replay.ewc_lambda, inputs.config.training
        if not inputs.buffer.items or strength <= 0:
            return [], ()
        fisher = fisher_diagonal(inputs.model, inputs.tokenizer, list(inputs.buffer.items), training.max_seq_len,
                                 training.batch_size)
        received = {name: p.detach().clone() for name, p in adapter_parameters(inputs.model).items()}
        return [], (ewc_penalty(strength, fisher, received),)
