"""nf4 inference on the CPU: bitsandbytes' repacked AVX512-BF16 kernel against the path Stamen trains on.

Stamen keeps 4-bit layers differentiable (``trainable=True``, docs/nf4-on-cpu.md), which on a CPU
with AVX512-BF16 gives up bitsandbytes' repacked inference kernel; ``trainable=False`` keeps it for
a model that only generates and scores. This measures what that costs: greedy generation and
scoring speed, and the scoring loss of each path (the kernel computes in bf16). On a CPU without
AVX512-BF16 both rows take the same path, and ``packed_layers`` says 0.

    python benchmarks/nf4_cpu_inference.py --base smollm2-135m [--new-tokens 64 --repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch
from report import add_results_option, print_table, write_results

from stamen.client.evaluation.loss import evaluate_loss
from stamen.shared.base_model import load_base
from stamen.shared.examples import Example
from stamen.shared.quantisation import packed_4bit_layers

PROMPT = "Tell me about the history of the world."
TEXTS = [Example(prompt="What is the capital of France?", response="The capital of France is Paris, on the Seine."),
         Example(prompt="How do computers work?", response="A computer runs programs that process data in memory."),
         Example(prompt="Do you like food?", response="I like pizza, bread, cheese and fresh fruit every day."),
         Example(prompt="What is money?", response="Money is a medium of exchange and a store of value.")] * 4


def measure(base: str, trainable: bool, new_tokens: int, repeats: int) -> dict:
    loaded = load_base(base, quantisation="nf4", device="cpu", trainable=trainable)
    model, tokenizer = loaded.model, loaded.tokenizer
    inputs = tokenizer(PROMPT, return_tensors="pt")
    loss = evaluate_loss(model, tokenizer, TEXTS, 64, 8)  # the first inference-mode forward: repacks if allowed
    generate, score = [], []
    for _ in range(repeats):
        started = time.perf_counter()
        with torch.no_grad():
            model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
        generate.append(new_tokens / (time.perf_counter() - started))
        started = time.perf_counter()
        evaluate_loss(model, tokenizer, TEXTS, 64, 8)
        score.append(loss.tokens / (time.perf_counter() - started))
    return {"path": "inference-only (trainable=False)" if not trainable else "trainable (Stamen's default)",
            "packed_layers": len(packed_4bit_layers(model)),
            "generate_tokens_per_s": round(statistics.median(generate), 1),
            "score_tokens_per_s": round(statistics.median(score), 1),
            "score_loss": round(loss.loss, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    add_results_option(parser)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from bitsandbytes.functional import has_avx512bf16

    rows = [measure(args.base, trainable, args.new_tokens, args.repeats) for trainable in (True, False)]
    print_table(rows)
    write_results("nf4_cpu_inference", rows, args.results, base=args.base, avx512bf16=bool(has_avx512bf16()),
                  threads=args.threads, new_tokens=args.new_tokens, repeats=args.repeats,
                  cpu=platform.processor() or platform.machine())


if __name__ == "__main__":
    main()
