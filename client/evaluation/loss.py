"""Held-out loss and perplexity of the model as it stands (global or personal adapter)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from stamen.shared.adapters import input_logits
from stamen.shared.examples import IGNORE_INDEX, Example, collate, encode_example


@dataclass(frozen=True)
class EvalResult:
    loss: float
    perplexity: float
    tokens: int
    num_examples: int


@torch.no_grad()
def evaluate_loss(model, tokenizer, examples: list[Example], max_len: int, batch_size: int) -> EvalResult:
    """Token-weighted mean cross-entropy over the scored tokens of ``examples``."""
    if not examples:
        raise ValueError("cannot evaluate on an empty example set")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    encoded = [encode_example(tokenizer, e, max_len) for e in examples]
    total_loss, total_tokens = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        batch = {
            k: v.to(device) for k, v in collate(encoded[start : start + batch_size], tokenizer.pad_token_id).items()
        }
        output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        logits = input_logits(output.logits, batch["input_ids"])
        targets = batch["labels"][:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].float().reshape(-1, logits.size(-1)),
            targets.reshape(-1),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        total_loss += losses.item()
        total_tokens += int((targets != IGNORE_INDEX).sum())
    model.train(was_training)
    loss = total_loss / max(total_tokens, 1)
    return EvalResult(loss, math.exp(min(loss, 50.0)), total_tokens, len(examples))
