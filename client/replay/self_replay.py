"""Generative self-replay: pseudo-examples the frozen base writes itself, so no data is stored.

Prompts come from a short seed list (none of them is a forgetting-probe prompt);
answers are sampled from the base with every adapter disabled, so they show what
the base could do before any personalisation. The base never changes, so a device's
sets are written once per base and kept in Stamen's cache (keyed by the base's
fingerprint, the device and the draw), across rounds and runs: a new draw every
``replay-self-refresh`` rounds, sampled in one batch (generate's KV cache).
The round that writes one reports ``self-replay-writing-seconds``, apart from
what replay costs every round.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
import zlib

import torch

from stamen.shared.cache import cache_dir, cached_json
from stamen.shared.examples import Example
from stamen.shared.metrics import SELF_REPLAY_WRITING_SECONDS

from ..evaluation.generation import answers as model_answers
from .sources import ReplayInputs, ReplaySource, register

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
    model, tokenizer, base_identity: str, server_round: int, client_name: str, size: int, refresh: int,
    costs: dict[str, float] | None = None,
) -> list[Example]:
    """This round's pseudo-examples: draw ``(server_round - 1) // refresh`` of this device on this base, from the
    cache or written now (its seconds then go to ``costs``)."""
    draw = (server_round - 1) // refresh
    key = json.dumps([base_identity, client_name, size, draw, MAX_NEW_TOKENS, SEED_PROMPTS])
    path = cache_dir("self-replay") / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"

    def write() -> list[list[str]]:
        started = time.perf_counter()
        seed = zlib.crc32(f"self-replay/{client_name}/{draw}".encode())
        prompts = random.Random(seed).choices(SEED_PROMPTS, k=size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            answers = model_answers(model, tokenizer, prompts, MAX_NEW_TOKENS, base_alone=True, do_sample=True,
                                    temperature=0.8, top_p=0.95)
        if costs is not None:
            costs[SELF_REPLAY_WRITING_SECONDS.name] = time.perf_counter() - started
        return [[prompt, answer.strip() or "."] for prompt, answer in zip(prompts, answers, strict=True)]

    return [Example(response, prompt) for prompt, response in cached_json(path, write)]


@register("self")
class SelfReplay(ReplaySource):
    """Pseudo-examples the frozen base writes itself (nothing of the device's data is kept)."""

    @classmethod
    def replay(cls, inputs: ReplayInputs) -> tuple[list[Example], tuple]:
        spec = inputs.config.replay
        return self_replay_examples(inputs.model, inputs.tokenizer, inputs.base_identity, inputs.server_round,
                                    inputs.client_name, spec.self_size, spec.self_refresh, inputs.costs), ()
