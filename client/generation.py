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
    return tokenizer.batch_decode(answer_ids(model, tokenizer, prompts, max_new_tokens, base_alone, **sampling),
                                  skip_special_tokens=True)


@torch.no_grad()
def answer_ids(model: torch.nn.Module, tokenizer, prompts: list[str], max_new_tokens: int, base_alone: bool = False,
               **sampling) -> torch.Tensor:
    """:func:`answers` as token ids, one row per prompt (padded after an answer that ended early)."""
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
    return output[:, batch["input_ids"].shape[1]:]


@torch.no_grad()
def gives_replies(model: torch.nn.Module, tokenizer, prompts: list[str], replies: list[tuple[int, ...]]) -> list[bool]:
    """Whether greedy decoding from each prompt would begin with its reply (token ids): every reply token is the
    model's most likely next token after the prompt and the reply before it. One teacher-forced pass instead of a
    generation, and the prompts' common start (a chat template's system turn) is run once and shared."""
    device = next(model.parameters()).device
    encoded = [tokenizer(format_prompt(tokenizer, p), add_special_tokens=False)["input_ids"] for p in prompts]
    sequences = [prompt + list(reply) for prompt, reply in zip(encoded, replies, strict=True)]
    shared = min(_common_start(sequences), min(map(len, encoded)) - 1)  # each row keeps a prompt token to predict from
    rest = [sequence[shared:] for sequence in sequences]
    width = max(map(len, rest))
    input_ids = torch.full((len(rest), width), tokenizer.pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(rest), shared + width), dtype=torch.long, device=device)
    mask[:, :shared] = 1
    for row, tokens in enumerate(rest):
        input_ids[row, :len(tokens)] = torch.tensor(tokens, device=device)
        mask[row, shared:shared + len(tokens)] = 1
    was_training = model.training
    model.eval()
    cache = None
    if shared:
        cache = model(input_ids=torch.tensor([sequences[0][:shared]], device=device), use_cache=True).cache
        cache.batch_repeat_interleave(len(rest))
    positions = torch.arange(shared, shared + width, device=device).expand(len(rest), -1)
    predicted = model(input_ids=input_ids, attention_mask=mask, position_ids=positions, cache=cache,
                      use_cache=cache is not None).logits.argmax(-1).tolist()
    model.train(was_training)
    # the token at sequence position i predicts position i + 1: the reply's from the prompt's last token on
    return [predicted[row][len(prompt) - 1 - shared:len(prompt) - 1 - shared + len(reply)] == list(reply)
            for row, (prompt, reply) in enumerate(zip(encoded, replies, strict=True))]


def _common_start(sequences: list[list[int]]) -> int:
    """How many leading tokens every sequence shares."""
    length = 0
    for column in zip(*sequences, strict=False):
        if any(token != column[0] for token in column):
            break
        length += 1
    return length
