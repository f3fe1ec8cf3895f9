"""Local examples and how they become token batches for a causal LM.

An example is a prompt/response pair (loss on the response only) or a plain
text (loss on every token); a chat's earlier turns ride along as its history. Prompts go through the
tokenizer's chat template when it has one, so an instruct base sees the format it was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    """One private training or evaluation example."""

    response: str
    prompt: str | None = None
    history: tuple[tuple[str, str], ...] = ()  # a chat's (role, content) turns before the prompt


@dataclass(frozen=True)
class EncodedExample:
    input_ids: list[int]
    labels: list[int]


def encode_example(tokenizer, example: Example, max_len: int) -> EncodedExample:
    """Token ids and labels; prompt tokens are masked out of the loss. A prompt too long for ``max_len`` loses
    its start, so the example still scores part of its response (a batch of none gives a NaN loss)."""
    response_ids = [*tokenizer(example.response, add_special_tokens=False).input_ids, tokenizer.eos_token_id]
    if example.prompt is None:
        ids = response_ids
        labels = list(ids)
    else:
        prompt_ids = tokenizer(format_prompt(tokenizer, example.prompt, example.history),
                               add_special_tokens=False).input_ids
        if len(prompt_ids) >= max_len:  # no response token would fit: keep the prompt's end and some response
            prompt_ids = prompt_ids[len(prompt_ids) - (max_len - min(len(response_ids), max_len // 2)):]
        ids = prompt_ids + response_ids
        labels = [IGNORE_INDEX] * len(prompt_ids) + response_ids
    return EncodedExample(ids[:max_len], labels[:max_len])


def collate(batch: list[EncodedExample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a batch; padding is neither attended to nor scored."""
    width = max(len(e.input_ids) for e in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, example in enumerate(batch):
        n = len(example.input_ids)
        input_ids[row, :n] = torch.tensor(example.input_ids)
        labels[row, :n] = torch.tensor(example.labels)
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


def format_prompt(tokenizer, prompt: str, history: tuple[tuple[str, str], ...] = ()) -> str:
    """``prompt`` as the user's turn after ``history``, ready for the assistant's reply."""
    if tokenizer.chat_template:
        turns = [*({"role": role, "content": content} for role, content in history),
                 {"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return "".join(plain_prompt(content) for _, content in history) + plain_prompt(prompt)


def plain_prompt(prompt: str) -> str:
    """A prompt as Stamen formats it for a base without a chat template (Gemma 3's GGUF carries none)."""
    return f"{prompt}\n"
