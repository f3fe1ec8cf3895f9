"""Learning without forgetting (Li & Hoiem 2016) on replayed rows: instead of training on a replayed
example's text, the adapted model is pulled toward the frozen base's own next-token distribution on it.

The teacher is the same model with every adapter disabled, so nothing is sampled and nothing is stored:
one extra forward pass without gradients over the replayed rows of each batch (a quarter of it at the
default ``replay-ratio``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .adapters import base_alone, input_logits
from .examples import IGNORE_INDEX


@dataclass(frozen=True)
class Distillation:
    """How replayed rows are scored: ``weight`` x KL(base || adapted model) at ``temperature``."""

    weight: float
    temperature: float


def distilled_loss(
    model, batch: dict[str, torch.Tensor], rows: int, distillation: Distillation
) -> tuple[torch.Tensor, float]:
    """The batch's loss when its first ``rows`` rows are replayed: cross-entropy on the other rows plus
    the weighted KL divergence from the base to the model at the replayed rows' response positions;
    and that divergence (how far the model has moved from the base there)."""
    labels = batch["labels"]
    scored = labels[:rows, 1:] != IGNORE_INDEX  # positions whose next token is part of a response
    own = labels.clone()
    own[:rows] = IGNORE_INDEX  # the replayed text itself is not a target
    replayed = {"input_ids": batch["input_ids"][:rows], "attention_mask": batch["attention_mask"][:rows]}
    was_training = model.training
    model.eval()
    with torch.no_grad(), base_alone(model):
        teacher = model(**replayed).logits[:, :-1][scored]
    model.train(was_training)
    output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=own)
    if not scored.any():
        return output.loss, 0.0
    student = input_logits(output.logits, batch["input_ids"])
    divergence = kl_to_teacher(student[:rows, :-1][scored], teacher, distillation.temperature)
    return output.loss + distillation.weight * divergence, divergence.item()


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean KL(teacher || student) per position of the softened distributions, times T^2 so the gradient's
    scale does not shrink as the temperature grows (Hinton et al. 2015)."""
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2
