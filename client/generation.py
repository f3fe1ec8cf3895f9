"""Greedy answers from the model as it stands (with its adapter), for apps and for attack metrics."""

from __future__ import annotations

import torch

from .data import format_prompt


@torch.no_grad()
def generate_answer(model: torch.nn.Module, tokenizer, prompt: str, max_new_tokens: int = 48) -> str:
    inputs = tokenizer(format_prompt(tokenizer, prompt), return_tensors="pt").to(next(model.parameters()).device)
    was_training = model.training
    model.eval()
    output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
