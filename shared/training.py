"""The local training loop: a few optimiser steps on the adapter, nothing else.

Kept small enough to hold in one's head (nanoGPT-style): seeded sampling,
gradient accumulation, a learning-rate schedule, gradient clipping.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch

from stamen.shared.adapters import active_peft_type, adapter_parameters
from stamen.shared.config import TrainingSpec
from stamen.shared.quantisation import packed_4bit_layers

from .distillation import Distillation, distilled_loss
from .examples import Example, collate, encode_example
from .optimizer_state import export_state, import_state
from .peft_methods import peft_method

MAX_GRAD_NORM = 1.0
GradientCorrection = Callable[[Mapping[str, torch.nn.Parameter]], None]
"""Adjusts the adapter's gradients after backward, before the optimiser step (FedProx, SCAFFOLD, EWC)."""
log = logging.getLogger(__name__)


class NothingTrained(RuntimeError):
    """Training ran but could not change the adapter: sending its all-zero delta would pass for an update."""


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean training loss over the round's steps
    steps: int
    examples_seen: int
    tokens: int
    seconds: float
    optimizer_state: dict[str, np.ndarray] = field(default_factory=dict)  # AdamW's moments after the round
    flat_steps: int = 0  # steps whose gradient reached the adapter as all zeros (a batch already fit, or a zeroed path)
    distill_kl: float | None = None  # mean KL(base || model) on the replayed rows, under distillation


def train_adapter(
    model,
    tokenizer,
    examples: list[Example],
    spec: TrainingSpec,
    seed: int,
    corrections: tuple[GradientCorrection, ...] = (),
    replay: list[Example] = (),
    replay_ratio: float = 0.0,
    optimizer_state: dict[str, np.ndarray] | None = None,
    distillation: Distillation | None = None,
) -> TrainResult:
    """Run ``spec.local_steps`` optimiser steps on the adapter of ``model``.

    ``corrections`` adjust the adapter gradients before each step (FedProx, SCAFFOLD).
    ``replay`` examples take ``replay_ratio`` of every batch's slots (forgetting protection).
    ``optimizer_state`` (from an earlier result) continues AdamW's moments instead of starting afresh.
    ``distillation`` scores the replayed rows by the frozen base's distribution instead of their text.
    """
    from transformers import get_scheduler

    if not examples:
        raise ValueError("cannot train on an empty example set")
    _check_trainable(model)
    started = time.perf_counter()
    encoded = [encode_example(tokenizer, e, spec.max_seq_len) for e in examples]
    replayed = [encode_example(tokenizer, e, spec.max_seq_len) for e in replay]
    replay_slots = min(round(replay_ratio * spec.batch_size), spec.batch_size - 1) if replayed else 0
    batches = _Batches(encoded, replayed, spec.batch_size, replay_slots, torch.Generator().manual_seed(seed))
    named = adapter_parameters(model)
    params = list(named.values())
    received = [p.detach().clone() for p in params]
    optimizer = torch.optim.AdamW(params, lr=spec.learning_rate, weight_decay=0.0)
    if optimizer_state:
        import_state(optimizer, named, optimizer_state)
    scheduler = get_scheduler(spec.lr_schedule, optimizer, spec.warmup_steps, spec.local_steps)
    after_step = peft_method(active_peft_type(model).lower()).step_hook(model, spec.local_steps)  # AdaLoRA's budget
    step = _AccumulatedStep(model, tokenizer.pad_token_id, spec.grad_accum, distillation)

    model.train()
    losses, flat_steps = [], 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # adapter dropout draws from the global generator
        for number in range(spec.local_steps):
            losses.append(step.backward(batches, len(losses) + 1))
            flat_steps += not any(bool(p.grad.any()) for p in params if p.grad is not None)
            for correct in corrections:
                correct(named)
            torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
            optimizer.step()
            scheduler.step()
            if after_step:
                after_step(number)
            optimizer.zero_grad(set_to_none=True)
    model.eval()
    _check_moved(received, params, spec, flat_steps)
    seen = min(len(encoded), spec.local_steps * spec.grad_accum * spec.batch_size)
    return TrainResult(sum(losses) / len(losses), spec.local_steps, seen, step.tokens, time.perf_counter() - started,
                       export_state(optimizer, named), flat_steps,
                       sum(step.divergences) / len(step.divergences) if step.divergences else None)


class _Batches:
    """Training batches: ``replay_slots`` replayed rows drawn at random, the rest the examples in a seeded order
    that is shuffled again each time it runs out (every draw from one generator, so a seed fixes the stream)."""

    def __init__(self, encoded: list, replayed: list, batch_size: int, replay_slots: int,
                 generator: torch.Generator) -> None:
        self.encoded, self.replayed, self.generator = encoded, replayed, generator
        self.batch_size, self.replay_slots = batch_size, replay_slots
        self.order, self.cursor = torch.randperm(len(encoded), generator=generator).tolist(), 0

    def next(self) -> list:
        picked = ([self.replayed[i] for i in torch.randint(len(self.replayed), (self.replay_slots,),
                                                            generator=self.generator)]
                  if self.replay_slots else [])
        for _ in range(self.batch_size - self.replay_slots):
            if self.cursor == len(self.order):
                self.order, self.cursor = torch.randperm(len(self.encoded), generator=self.generator).tolist(), 0
            picked.append(self.encoded[self.order[self.cursor]])
            self.cursor += 1
        return picked


class _AccumulatedStep:
    """One optimiser step's gradients: ``grad_accum`` batches' losses backpropagated, tokens and (under
    distillation) the replayed rows' divergence from the base counted."""

    def __init__(self, model, pad_token_id: int, grad_accum: int, distillation: Distillation | None) -> None:
        self.model, self.pad_token_id = model, pad_token_id
        self.grad_accum, self.distillation = grad_accum, distillation
        self.device = next(model.parameters()).device
        self.tokens, self.divergences = 0, []

    def backward(self, batches: _Batches, step: int) -> float:
        """Backpropagate one step's batches; return its loss."""
        step_loss = 0.0
        for _ in range(self.grad_accum):
            batch = {k: v.to(self.device) for k, v in collate(batches.next(), self.pad_token_id).items()}
            if self.distillation and batches.replay_slots:
                loss, divergence = distilled_loss(self.model, batch, batches.replay_slots, self.distillation)
                self.divergences.append(divergence)
            else:
                loss = self.model(**batch).loss
            loss = loss / self.grad_accum
            if not loss.requires_grad:
                raise NothingTrained(f"no adapter parameter received a gradient in step {step}: the graph from the "
                                     "loss to the adapter is cut (a non-differentiable layer on every path)")
            loss.backward()
            step_loss += loss.item()
            self.tokens += int(batch["attention_mask"].sum())
        return step_loss


def _check_trainable(model) -> None:
    packed = packed_4bit_layers(model)
    if packed:
        raise NothingTrained(f"{len(packed)} 4-bit layers (e.g. {packed[0]}) were repacked for bitsandbytes' CPU "
                             "inference kernel, which has no gradient: load the base with trainable=True to train it")


def _check_moved(received: list[torch.Tensor], params: list[torch.nn.Parameter], spec: TrainingSpec,
                 flat_steps: int) -> None:
    """An adapter no step moved is an error (its delta would pass for an update); steps with an all-zero gradient
    are counted and logged."""
    if all(torch.equal(before, after) for before, after in zip(received, params, strict=False)):
        raise NothingTrained(f"{spec.local_steps} steps left every adapter value as it was "
                             f"(learning rate {spec.learning_rate}, schedule {spec.lr_schedule}): "
                             "there is no update to send")
    if flat_steps:
        log.warning("%d of %d steps gave the adapter an all-zero gradient (batches already fit)",
                    flat_steps, spec.local_steps)
