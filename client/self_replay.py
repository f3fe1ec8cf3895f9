"""Generative self-replay: pseudo-examples the frozen base writes itself, so no data is stored.

Prompts come from a short seed list (none of them is a forgetting-probe prompt);
answers are sampled from the base with every adapter disabled, so they show what
the base could do before any personalisation. A client caches its set in its
state store and writes it afresh every ``replay-self-refresh`` rounds.
"""

from __future__ import annotations

import random
import zlib

import torch

from .data import Example, format_prompt
from .state_store import ClientStateStore

SELF_REPLAY = "self-replay"
SEED_PROMPTS = (
    "Tell me something interesting about the moon.",
    "How do I make a cup of tea?",
    "What is a good way to start the day?",
    "Describe a cat in two sentences.",
    "What is the difference between weather and climate?",
    "Give me a tip for learning a new language.",
    "Why do leaves change colour in autumn?",
    "What does a doctor do?",
    "How does a bicycle work?",
    "What is your favourite season and why?",
    "Explain what a map is used for.",
    "What should I pack for a day at the beach?",
    "How do birds know where to fly in winter?",
    "What is a healthy breakfast?",
    "Write one sentence about the sea.",
    "Why do people read stories?",
)
MAX_NEW_TOKENS = 32


def self_replay_examples(
    model, tokenizer, store: ClientStateStore, server_round: int, client_name: str, size: int, refresh: int
) -> tuple[list[Example], bool]:
    """This round's pseudo-examples, and whether they were written now (else read from the cache)."""
    cached = store.load_document(SELF_REPLAY, server_round)
    if cached and server_round - cached["written"] < refresh:
        return [Example(response, prompt) for prompt, response in cached["examples"]], False
    seed = zlib.crc32(f"self-replay/{client_name}/{server_round}".encode())
    prompts = random.Random(seed).choices(SEED_PROMPTS, k=size)
    answers = _sample_from_base(model, tokenizer, prompts, seed)
    examples = [Example(answer.strip() or ".", prompt) for prompt, answer in zip(prompts, answers)]
    store.save_document(SELF_REPLAY, server_round, {"written": server_round,
                                                   "examples": [[e.prompt, e.response] for e in examples]})
    return examples, True


@torch.no_grad()
def _sample_from_base(model, tokenizer, prompts: list[str], seed: int) -> list[str]:
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    batch = tokenizer([format_prompt(tokenizer, p) for p in prompts], return_tensors="pt", padding=True,
                      add_special_tokens=False).to(device)
    tokenizer.padding_side = "right"
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[]), model.disable_adapter():
        torch.manual_seed(seed)
        output = model.generate(**batch, max_new_tokens=MAX_NEW_TOKENS, do_sample=True, temperature=0.8, top_p=0.95,
                                pad_token_id=tokenizer.pad_token_id)
    model.train(was_training)
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
