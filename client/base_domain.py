"""Texts the frozen base itself writes from general prompts: a forgetting probe it starts good at.

Greedy continuations are deterministic for a given base and quantisation, so
they are generated once and cached; every later run reads the file.
"""

from __future__ import annotations

import json

from stamen.shared.atomic import atomic_write_text
from stamen.shared.cache import cache_dir
from stamen.shared.examples import Example
from stamen.shared.fingerprint import short

from .generation import base_answers

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


def base_generated_examples(
    model, tokenizer, fingerprint: str, quantisation: str, max_new_tokens: int = 32
) -> list[Example]:
    """Prompt/response pairs answered by the base with every adapter disabled."""
    cache_file = cache_dir("base-domain") / f"{short(fingerprint)}-{quantisation}-{max_new_tokens}.json"
    if cache_file.is_file():
        return [Example(**row) for row in json.loads(cache_file.read_text())]
    answers = base_answers(model, tokenizer, list(GENERAL_PROMPTS), max_new_tokens, do_sample=False)
    examples = [Example(response=a.strip() or ".", prompt=p) for p, a in zip(GENERAL_PROMPTS, answers, strict=False)]
    atomic_write_text(cache_file, json.dumps([e.__dict__ for e in examples]))
    return examples
