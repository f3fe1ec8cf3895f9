"""One local round of a client: peak memory and tokens/s per way of holding the base.

Each mode runs in its own subprocess so peak RSS (CPU) and peak CUDA memory are the
mode's own. Modes: LoRA on an nf4 / int8 / unquantised base (Stamen's training loop),
``peft-*``: the same LoRA steps (batch size, sequence length, AdamW, learning rate) through a
plain transformers + peft loop, the way a peer would write it, so Stamen's loop can be checked
for overhead, and ``full-none``: every weight of the unquantised base trained by that plain loop
(what adapters avoid; Stamen's loop trains adapters only). Each mode is evaluated before its
first round, as every client is, and after its last: ``learns`` says the loss fell (speed of a
round that trains nothing is no speed).

    python benchmarks/client_round.py --base smollm2-135m --device cpu
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

from report import add_results_option, measure_in_child, print_table, write_results

MODES = ("lora-nf4", "peft-nf4", "lora-int8", "lora-none", "peft-none", "full-none")


def plain_peft_loop(model, tokenizer, examples, steps: int, batch: int, seq: int, learning_rate: float,
                    seed: int) -> int:
    """A textbook transformers (+ peft) training loop: chat-formatted texts, padded batches,
    labels = input ids (padding ignored), AdamW. Returns the tokens it trained on.

    Examples are drawn in the same seeded order as Stamen's loop draws them, so both pad
    the same batches (the order decides how much padding a batch carries)."""
    import torch

    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    texts = [tokenizer.apply_chat_template([{"role": "user", "content": examples[i].prompt or ""},
                                            {"role": "assistant", "content": examples[i].response}], tokenize=False)
             for i in order]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    device, tokens = next(model.parameters()).device, 0
    model.train()
    for step in range(steps):
        chunk = [texts[(step * batch + i) % len(texts)] for i in range(batch)]
        inputs = tokenizer(chunk, padding=True, truncation=True, max_length=seq, return_tensors="pt").to(device)
        labels = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        model(**inputs, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens += int(inputs["attention_mask"].sum())
    return tokens


def reset_peak_rss() -> None:
    """Hand freed heap back to the OS, then reset the kernel's high-water mark of this
    process's RSS (Linux: clear_refs 5), so loading's transient copies do not count."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def rss_kb(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (the peak since :func:`reset_peak_rss`) of this process, in kB."""
    status = Path("/proc/self/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith(f"{field}:")))


def trainable_model(kind: str, base):
    """The base with Stamen's LoRA (``lora``), with plain PEFT's LoRA of the same settings (``peft``), or with every
    weight trainable (``full``)."""
    from peft import LoraConfig, get_peft_model

    from stamen.shared.adapters import attach_adapter
    from stamen.shared.config import AdapterSpec

    spec = AdapterSpec()
    if kind == "lora":
        return attach_adapter(base, spec, seed=0)
    if kind == "peft":
        return get_peft_model(base, LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                               target_modules=list(spec.targets), task_type="CAUSAL_LM"))
    for parameter in base.parameters():
        parameter.requires_grad_(True)
    return base


def run_mode(mode: str, base: str, device: str, steps: int, batch: int, seq: int, repeats: int) -> dict:
    """Measure one mode in this process (called in a fresh subprocess): the median speed of
    ``repeats`` rounds after a warm-up round, and the peak memory over them."""
    import torch

    from stamen.client.evaluation.loss import evaluate_loss
    from stamen.shared.base_model import load_base
    from stamen.shared.config import TrainingSpec
    from stamen.shared.corpus import natural_split
    from stamen.shared.training import train_adapter

    kind, quantisation = mode.split("-")
    imports_kb = rss_kb("VmRSS")  # torch, transformers, peft, bitsandbytes: the same in every mode
    loaded = load_base(base, quantisation, device)
    model = trainable_model(kind, loaded.model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples = list(natural_split(4).clients[0].train)
    training = TrainingSpec(local_steps=steps, batch_size=batch, max_seq_len=seq)

    def one_round(n_steps: int, seed: int) -> int:
        if kind in ("peft", "full"):
            return plain_peft_loop(model, loaded.tokenizer, examples, n_steps, batch, seq, training.learning_rate, seed)
        return train_adapter(model, loaded.tokenizer, examples, replace(training, local_steps=n_steps), seed).tokens

    # evaluated first, as every client is (round-0 baseline): on some CPUs that used to stop nf4 from learning
    loss_before = evaluate_loss(model, loaded.tokenizer, examples, seq, batch).loss
    one_round(steps, seed=0)  # warm-up: bitsandbytes' CUDA kernels take several steps to settle
    reset_peak_rss()  # what loading took is not the round's
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    speeds = []
    for repeat in range(repeats):
        started = time.perf_counter()
        tokens = one_round(steps, seed=1 + repeat)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize()
        speeds.append(tokens / (time.perf_counter() - started))
    loss_after = evaluate_loss(model, loaded.tokenizer, examples, seq, batch).loss
    row = {
        "mode": mode,
        "device": torch.cuda.get_device_name(loaded.device)
        if loaded.device.type == "cuda"
        else platform.processor() or "cpu",
        "trainable_params": trainable,
        "steps": steps,
        "tokens": tokens,
        "tokens_per_s": round(statistics.median(speeds), 1),
        "peak_rss_mb": round(rss_kb("VmHWM") / 1024, 1),
        "above_imports_mb": round((rss_kb("VmHWM") - imports_kb) / 1024, 1),
        "loss_before": round(loss_before, 4),
        "loss_after": round(loss_after, 4),
        "learns": loss_after < loss_before,
    }
    if loaded.device.type == "cuda":
        row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated(loaded.device) / 2**20, 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    add_results_option(parser)
    args = parser.parse_args()
    if args.one_mode:
        print(
            json.dumps(run_mode(args.one_mode, args.base, args.device, args.steps, args.batch, args.seq, args.repeats))
        )
        return
    rows = []
    for mode in args.modes.split(","):
        command = [__file__, "--one-mode", mode, "--base", args.base, "--device", args.device,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq),
                   "--repeats", str(args.repeats)]
        rows.append(measure_in_child(command))
        print(f"measured {mode}", file=sys.stderr)
    memory_key = "peak_cuda_mb" if "peak_cuda_mb" in rows[0] else "peak_rss_mb"
    full = next((r for r in rows if r["mode"] == "full-none"), None)
    for row in rows:
        row["vs_full_ft"] = round(row[memory_key] / full[memory_key], 3) if full else None
        row["above_imports_vs_full_ft"] = (round(row["above_imports_mb"] / full["above_imports_mb"], 3)
                                           if full else None)
    print_table([{k: v for k, v in row.items() if k != "device"} for row in rows])
    stalled = [row["mode"] for row in rows if not row["learns"]]
    if stalled:
        print(f"NOT LEARNING: {', '.join(stalled)} (loss after the measured rounds is not below the loss before)")
    write_results(f"client_round-{args.device.split(':')[0]}", rows, args.results, base=args.base,
                  device_name=rows[0]["device"], steps=args.steps, batch=args.batch, seq=args.seq, repeats=args.repeats)

if __name__ == "__main__":
    main()
