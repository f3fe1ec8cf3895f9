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

from stamen.shared.examples import Example

from .generation import answers as model_answers
from .replay_sources import ReplayInputs, ReplaySource, register
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
) -> list[Example]:
    """This round's pseudo-examples: from the cache, or written now when it is ``refresh`` rounds old."""
    cached = store.load_document(SELF_REPLAY, server_round)
    if cached and server_round - cached["written"] < refresh:
        return [Example(response, prompt) for prompt, response in cached["examples"]]
    seed = zlib.crc32(f"self-replay/{client_name}/{server_round}".encode())
    prompts = random.Random(seed).choices(SEED_PROMPTS, k=size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        answers = model_answers(model, tokenizer, prompts, MAX_NEW_TOKENS, base_alone=True, do_sample=True,
                                temperature=0.8, top_p=0.95)
    examples = [Example(answer.strip() or ".", prompt) for prompt, answer in zip(prompts, answers, strict=False)]
    store.save_document(SELF_REPLAY, server_round, {"written": server_round,
                                                   "examples": [[e.prompt, e.response] for e in examples]})
    return examples


@register("self")
class SelfReplay(ReplaySource):
    """Pseudo-examples the frozen base writes itself (nothing of the device's data is kept)."""

    @classmethod
    def replay(cls, inputs: ReplayInputs) -> tuple[list[Example], tuple]:
        spec = inputs.config.replay
        return self_replay_examples(inputs.model, inputs.tokenizer, inputs.store, inputs.server_round,
                                    inputs.client_name, spec.self_size, spec.self_refresh), ()
