"""One local round of a client: peak memory and tokens/s per way of holding the base.

Each mode runs in its own subprocess so peak RSS (CPU) and peak CUDA memory are the
mode's own. Modes: LoRA on an nf4 / int8 / unquantised base (Stamen's training loop),
and a full fine-tune of the unquantised base (what adapters avoid).

    python benchmarks/client_round.py --base smollm2-135m --device cpu
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
MODES = ("lora-nf4", "lora-int8", "lora-none", "full-none")


def run_mode(mode: str, base: str, device: str, steps: int, batch: int, seq: int) -> dict:
    """Measure one mode in this process (called in a fresh subprocess)."""
    import torch

    from stamen.client.training import train_adapter
    from stamen.shared.adapters import attach_adapter
    from stamen.shared.base_model import load_base
    from stamen.shared.config import AdapterSpec, TrainingSpec
    from stamen.simulations.corpus import natural_split

    kind, quantisation = mode.split("-")
    loaded = load_base(base, quantisation, device)
    if kind == "lora":
        model = attach_adapter(loaded.model, AdapterSpec(), seed=0)
    else:
        model = loaded.model
        for parameter in model.parameters():
            parameter.requires_grad_(True)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples = list(natural_split(4).clients[0].train)
    spec = TrainingSpec(local_steps=1, batch_size=batch, max_seq_len=seq)
    train_adapter(model, loaded.tokenizer, examples, spec, seed=0)  # warm-up
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    result = train_adapter(model, loaded.tokenizer, examples, TrainingSpec(local_steps=steps, batch_size=batch, max_seq_len=seq), seed=1)
    if loaded.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    row = {
        "mode": mode,
        "device": torch.cuda.get_device_name(loaded.device) if loaded.device.type == "cuda" else platform.processor() or "cpu",
        "trainable_params": trainable,
        "steps": steps,
        "tokens": result.tokens,
        "seconds": round(seconds, 3),
        "tokens_per_s": round(result.tokens / seconds, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
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
    parser.add_argument("--one-mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_mode:
        print(json.dumps(run_mode(args.one_mode, args.base, args.device, args.steps, args.batch, args.seq)))
        return
    rows = []
    for mode in args.modes.split(","):
        command = [sys.executable, __file__, "--one-mode", mode, "--base", args.base, "--device", args.device,
                   "--steps", str(args.steps), "--batch", str(args.batch), "--seq", str(args.seq)]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(output.strip().splitlines()[-1]))
        print(f"measured {mode}", file=sys.stderr)
    full = next((r for r in rows if r["mode"] == "full-none"), None)
    memory_key = "peak_cuda_mb" if "peak_cuda_mb" in rows[0] else "peak_rss_mb"
    header = f"{'mode':<10} {'trainable':>12} {'tokens/s':>10} {memory_key:>14} {'vs full FT':>10}"
    print(header)
    for row in rows:
        ratio = f"{row[memory_key] / full[memory_key]:.0%}" if full else "n/a"
        print(f"{row['mode']:<10} {row['trainable_params']:>12,} {row['tokens_per_s']:>10} {row[memory_key]:>14} {ratio:>10}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"client_round-{args.device.split(':')[0]}.json"
    out.write_text(json.dumps({"machine": platform.node(), "date": time.strftime("%Y-%m-%d"), "base": args.base,
                               "rows": rows}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
