"""Answers from the model: greedy with its adapter (apps, attack metrics, retention), or from the frozen base alone."""

from __future__ import annotations

import contextlib

import torch

from stamen.shared.adapters import base_alone as base_alone_context
from stamen.shared.examples import format_prompt


@torch.no_grad()
def generate_answer(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    inputs = tokenizer(format_prompt(tokenizer, prompt), return_tensors="pt").to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def answers(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, base_alone: bool = False,
            **sampling) -> list[str]:
    """Answers to ``prompts`` in one left-padded batch, by the model as it stands or (``base_alone``) by the
    frozen base with every adapter disabled; ``sampling`` goes to ``generate`` (greedy unless it says
    ``do_sample=True``)."""
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    batch = tokenizer([format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
    tokenizer.padding_side = "right"
    was_training = model.training
    model.eval()
    with base_alone_context(model) if base_alone else contextlib.nullcontext():
        output = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    model.train(was_training)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
