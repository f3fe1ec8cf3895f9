"""The personalised model where apps run models: llama.cpp with the base's GGUF and the adapter's GGUF.

Apps on laptops and phones run language models through llama.cpp, not PyTorch + PEFT. A device's adapter
leaves Stamen as a GGUF LoRA file (``stamen export --format gguf``, ``PersonalModel.export(format="gguf")``);
this module loads it the way such an app does (llama-cpp-python, the ``llama`` extra) to chat with it, and
scores token ids so that tests and benchmarks can set llama.cpp's next-token distribution beside PEFT's.
Decoding is greedy and unpenalised here: llama.cpp's default sampling (repeat penalty, top-k 40) makes a
small model drift, and a comparison between runtimes needs the same decision rule on both sides.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from stamen.shared.base_source import EMBEDDED_BASE, GEMMA_BASE, packaged_gguf_path
from stamen.shared.examples import IGNORE_INDEX, EncodedExample, plain_prompt
from stamen.shared.user_errors import UserError

GREEDY = {"temperature": 0.0, "top_k": 1, "top_p": 1.0, "min_p": 0.0, "repeat_penalty": 1.0}
INSTALL_HINT = ("llama.cpp is not installed: `pip install 'stamen[llama]'` (compiles llama.cpp, about 11 min on "
                "2 cores; `make test` builds it portably with CMAKE_ARGS=\"-DGGML_NATIVE=OFF -DGGML_AVX2=ON "
                "-DGGML_FMA=ON -DGGML_F16C=ON\" and caches the wheel)")


class LlamaRuntimeError(UserError, RuntimeError):
    """llama.cpp is missing, or cannot load the base or adapter it was given."""


def base_gguf(base: str | Path) -> Path:
    """The base as llama.cpp reads it: the packaged base's GGUF for its alias, or a ``.gguf`` file."""
    packaged = packaged_gguf_path(str(base))
    if packaged is not None:
        return packaged
    path = Path(base)
    if path.suffix != ".gguf" or not path.is_file():
        raise LlamaRuntimeError(f"llama.cpp needs the base as a .gguf file: {base!s} is not one "
                                f"(use the alias {EMBEDDED_BASE} for the embedded base, or {GEMMA_BASE})")
    return path


class LlamaModel:
    """A base GGUF with an optional GGUF LoRA adapter, loaded in llama.cpp."""

    def __init__(self, llm) -> None:
        self.llm = llm

    @classmethod
    def load(cls, base: str | Path = "smollm2-135m", adapter: str | Path | None = None, threads: int | None = None,
             context: int = 1024, scores: bool = False) -> LlamaModel:
        """``adapter``: a GGUF LoRA file (or a folder holding ``adapter.gguf``) applied at scale 1.
        ``scores=True`` keeps the logits of every position (:meth:`logits`), as scoring needs."""
        try:
            from llama_cpp import Llama
        except ImportError as error:
            raise LlamaRuntimeError(INSTALL_HINT) from error
        lora = _adapter_file(adapter) if adapter is not None else None
        try:
            llm = Llama(model_path=str(base_gguf(base)), lora_path=str(lora) if lora else None, n_ctx=context,
                        n_threads=threads or os.cpu_count(), logits_all=scores, verbose=False)
        except (ValueError, RuntimeError) as error:  # a base or adapter file llama.cpp cannot read
            raise LlamaRuntimeError(f"llama.cpp could not load base {base!s} with adapter {adapter!s}: {error}") \
                from error
        if lora and not llm._lora_adapter:  # llama-cpp-python 0.3.36 tests a NULL ctypes pointer with `is None`
            llm.close()
            raise LlamaRuntimeError(f"llama.cpp could not load base {base!s} with adapter {adapter!s}: not a LoRA "
                                    "adapter for this base (it would have run the base alone)")
        return cls(llm)

    def logits(self, ids: Sequence[int]) -> np.ndarray:
        """The next-token logits after each of ``ids`` (one row per position), from a fresh context."""
        if not self.llm._logits_all:
            raise ValueError("this model keeps the last position's logits only: load it with scores=True")
        self.llm.reset()
        self.llm.eval(list(ids))
        return np.array(self.llm._scores, dtype=np.float32)  # the logits eval() stored, one row per position

    def loss(self, encoded: Sequence[EncodedExample]) -> float:
        """Token-weighted mean cross-entropy over the scored tokens, as ``evaluate_loss`` computes it in torch."""
        total, tokens = 0.0, 0
        for example in encoded:
            logits = torch.from_numpy(self.logits(example.input_ids)[:-1])
            targets = torch.tensor(example.labels[1:])
            total += torch.nn.functional.cross_entropy(logits.double(), targets, ignore_index=IGNORE_INDEX,
                                                       reduction="sum").item()
            tokens += int((targets != IGNORE_INDEX).sum())
        if not tokens:
            raise ValueError("no scored token in the examples given")
        return total / tokens

    def chat(self, messages: list[dict[str, str]], max_tokens: int = 64) -> Iterator[str]:
        """The reply to ``messages`` (role/content dicts, the base's chat template), streamed piece by piece. A
        base whose GGUF has no chat template gets the turns as Stamen trained on them (``plain_prompt``), not
        llama-cpp-python's fallback format, which the adapter never saw."""
        if "tokenizer.chat_template" not in self.llm.metadata:
            text = "".join(plain_prompt(message["content"]) for message in messages)
            chunks = self.llm.create_completion(text, max_tokens=max_tokens, stream=True, **GREEDY)
            pieces = (chunk["choices"][0]["text"] for chunk in chunks)
        else:
            chunks = self.llm.create_chat_completion(messages=messages, max_tokens=max_tokens, stream=True, **GREEDY)
            pieces = (chunk["choices"][0]["delta"].get("content") for chunk in chunks)
        for piece in pieces:
            if piece:
                yield piece

    def answer(self, prompt: str, max_tokens: int = 64) -> str:
        """One user turn's reply, whole."""
        return "".join(self.chat([{"role": "user", "content": prompt}], max_tokens))


def _adapter_file(adapter: str | Path) -> Path:
    path = Path(adapter)
    path = path / "adapter.gguf" if path.is_dir() else path
    if not path.is_file() or path.suffix != ".gguf":
        raise LlamaRuntimeError(f"no GGUF adapter at {adapter!s}: write one with `stamen export RUN --format gguf` "
                                "or PersonalModel.export(folder, format='gguf')")
    return path
