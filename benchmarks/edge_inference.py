"""The personalised model on the device: torch + PEFT (each quantisation) against llama.cpp (GGUF base + adapter).

The same prompts, formatted by the base's chat template, and the same number of new tokens (end of text
suppressed), greedy. Each configuration runs in its own process, so its peak resident memory is its own
(``VmHWM``, Linux: the base loaded, the adapter attached, generation run). The adapter is a fresh LoRA (the
default r=8 on q_proj, v_proj) exported as PEFT and GGUF: speed and memory do not depend on its values. The
table also gives the files a device keeps: the base GGUF and the adapter in each format.

    python benchmarks/edge_inference.py [--new-tokens 64 --threads 2] [--runtimes torch-none,llama.cpp]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from report import add_results_option, measure_in_child, print_table, write_results

PROMPTS = ["Tell me about the history of the world.", "What should I cook tonight?", "How do computers work?"]
RUNTIMES = ["torch-none", "torch-int8", "torch-nf4", "llama.cpp"]


def measure_torch(quantisation: str, adapter: Path, new_tokens: int, threads: int) -> dict:
    import torch

    from stamen.client.edge import PersonalModel
    from stamen.shared.examples import format_prompt

    torch.set_num_threads(threads)
    model = PersonalModel.load(adapter=adapter, quantisation=quantisation, trainable=False)
    tokenizer, seconds = model.base.tokenizer, 0.0
    model.model.eval()
    for prompt in PROMPTS:
        inputs = tokenizer(format_prompt(tokenizer, prompt), return_tensors="pt", add_special_tokens=False)
        started = time.perf_counter()
        with torch.no_grad():
            output = model.model.generate(**inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                          do_sample=False, pad_token_id=tokenizer.pad_token_id)
        seconds += time.perf_counter() - started
        assert output.shape[1] - inputs["input_ids"].shape[1] == new_tokens
    return {"quantisation": model.base.quantisation.mode, "tokens_per_s": len(PROMPTS) * new_tokens / seconds}


def measure_llama(adapter: Path, new_tokens: int, threads: int) -> dict:
    from transformers import AutoTokenizer

    from stamen.client.llama_runtime import GREEDY, LlamaModel, base_gguf
    from stamen.shared.examples import format_prompt

    gguf = base_gguf("smollm2-135m")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = LlamaModel.load(adapter=adapter, threads=threads)
    seconds = 0.0
    for prompt in PROMPTS:
        started = time.perf_counter()
        reply = model.llm.create_completion(format_prompt(tokenizer, prompt), max_tokens=new_tokens,
                                            logit_bias={model.llm.token_eos(): -1e9}, **GREEDY)
        seconds += time.perf_counter() - started
        assert reply["usage"]["completion_tokens"] == new_tokens
    return {"quantisation": "Q4_1 GGUF", "tokens_per_s": len(PROMPTS) * new_tokens / seconds}


def one(runtime: str, adapter: Path, new_tokens: int, threads: int) -> dict:
    """One configuration, in this process: its speed and this process's peak memory."""
    if runtime == "llama.cpp":
        row = measure_llama(adapter / "adapter.gguf", new_tokens, threads)
    else:
        row = measure_torch(runtime.removeprefix("torch-"), adapter, new_tokens, threads)
    peak = _peak_resident_bytes()
    return {"runtime": runtime.split("-")[0], **row, "tokens_per_s": round(row["tokens_per_s"], 1),
            "peak_rss_mb": round(peak / 2**20, 1)}


def _peak_resident_bytes() -> int:
    """This process's peak resident memory (VmHWM: unlike ru_maxrss, not inherited from the parent process)."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM:"))) * 1024


def export_fresh_adapter(folder: Path) -> dict:
    """A default LoRA as PEFT and GGUF files; their sizes against the base GGUF's."""
    from stamen.client.edge import PersonalModel
    from stamen.shared.base_source import embedded_gguf_path

    model = PersonalModel.load(quantisation="none")
    model.export(folder)
    model.export(folder, format="gguf")
    return {"base_gguf_bytes": embedded_gguf_path().stat().st_size,
            "adapter_gguf_bytes": (folder / "adapter.gguf").stat().st_size,
            "adapter_peft_bytes": (folder / "adapter_model.safetensors").stat().st_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--runtimes", default=",".join(RUNTIMES), help=f"some of {','.join(RUNTIMES)}")
    parser.add_argument("--one", choices=RUNTIMES, help=argparse.SUPPRESS)  # a child process: one configuration
    parser.add_argument("--adapter", type=Path, help=argparse.SUPPRESS)
    add_results_option(parser)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.adapter, args.new_tokens, args.threads)))
        return
    with tempfile.TemporaryDirectory() as scratch:
        sizes = export_fresh_adapter(Path(scratch))
        rows = []
        for runtime in args.runtimes.split(","):
            rows.append(measure_in_child([__file__, "--one", runtime, "--adapter", scratch, "--new-tokens",
                                          str(args.new_tokens), "--threads", str(args.threads)]))
            print(rows[-1], flush=True)
    fastest_torch = max(row["tokens_per_s"] for row in rows if row["runtime"] == "torch")
    for row in rows:
        row["speed_vs_fastest_torch"] = round(row["tokens_per_s"] / fastest_torch, 2)
    print_table(rows)
    print(", ".join(f"{name} {value:,}" for name, value in sizes.items()))
    write_results("edge_inference", rows, args.results, **sizes, new_tokens=args.new_tokens, threads=args.threads,
                  prompts=len(PROMPTS))


if __name__ == "__main__":
    main()
