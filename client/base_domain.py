"""Texts the frozen base itself writes from general prompts: a forgetting probe it starts good at.

Greedy continuations are deterministic for a given base and quantisation, so
they are generated once and cached; every later run reads the file.
"""

from __future__ import annotations

import json

import torch

from stamen.shared.atomic import atomic_write_text
from stamen.shared.cache import cache_dir
from stamen.shared.fingerprint import short

from .data import Example, format_prompt

GENERAL_PROMPTS = (
    "What is the capital of France?",
    "How many days are there in a week?",
    "What colour is the sky on a clear day?",
    "Name a fruit that is yellow.",
    "What do bees make?",
    "Why do we need sleep?",
    "What is water made of?",
    "How do plants grow?",
    "What is the largest ocean on Earth?",
    "Who writes books?",
    "What is a computer?",
    "Why is exercise good for you?",
)


@torch.no_grad()
def base_generated_examples(model, tokenizer, fingerprint: str, quantisation: str, max_new_tokens: int = 32) -> list[Example]:
    """Prompt/response pairs answered by the base with every adapter disabled."""
    cache_file = cache_dir("base-domain") / f"{short(fingerprint)}-{quantisation}-{max_new_tokens}.json"
    if cache_file.is_file():
        return [Example(**row) for row in json.loads(cache_file.read_text())]
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    prompts = [format_prompt(tokenizer, p) for p in GENERAL_PROMPTS]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    tokenizer.padding_side = "right"
    with model.disable_adapter():
        output = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    answers = tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
    examples = [Example(response=a.strip() or ".", prompt=p) for p, a in zip(GENERAL_PROMPTS, answers)]
    atomic_write_text(cache_file, json.dumps([e.__dict__ for e in examples]))
    return examples
