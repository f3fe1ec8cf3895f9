"""Bytes per client per round: Stamen's uploads and downloads against the FlowerTune baseline
and full-model FedAvg, measured from the Flower records each would send for the same base.

- Stamen: the shared part of the adapter, encoded by ``stamen.shared.wire`` in fp16 for the
  LoRA modes ``naive``, ``ffa`` (B only) and ``fedsa`` (A only), and in 8-bit blockwise
  (``wire-dtype = "int8"``, uploads with error feedback) for ``naive``.
- FlowerTune baseline (harness below, written from its documented behaviour): the client
  returns ``get_peft_model_state_dict(model)`` as float32 arrays and the server sends the
  same full LoRA state back each round.
- Full-model FedAvg: every base parameter as float32, each way.

Bytes are ``ArrayRecord.count_bytes()`` (payload + array headers and names), the number
Stamen's run metrics report. The personal-loss cost of 8-bit uploads comes from a real run:
``stamen compare simulations/compression.toml``.

    python benchmarks/communication.py [--base smollm2-135m]
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping

import numpy as np
import torch
from flwr.app import Array, ArrayRecord
from peft import get_peft_model_state_dict
from report import add_results_option, print_table, write_results

from stamen.shared.adapters import adapter_state, attach_adapter, shared_state
from stamen.shared.base_model import load_base
from stamen.shared.config import AdapterSpec
from stamen.shared.wire import encode_adapter

STAMEN_SETTINGS = (("naive", "float16"), ("ffa", "float16"), ("fedsa", "float16"), ("naive", "int8"))


def flowertune_record(state: Mapping[str, torch.Tensor]) -> ArrayRecord:
    """What a FlowerTune client sends (and receives): the full PEFT state dict, float32 numpy arrays."""
    return ArrayRecord({name: Array(tensor.detach().float().cpu().numpy()) for name, tensor in state.items()})


def stamen_row(base, setting: tuple[str, str], base_bytes: int) -> dict:
    mode, wire = setting
    model = attach_adapter(base.model, AdapterSpec(aggregation=mode), seed=0)
    shared = {k: v.numpy() for k, v in shared_state(adapter_state(model), AdapterSpec(aggregation=mode)).items()}
    record = encode_adapter(shared, wire)
    base.model = model.unload()
    return row(f"stamen {mode} {wire}", sum(v.size for v in shared.values()), record.count_bytes(),
               record.count_bytes(), base_bytes)


def row(setting: str, values: int, up: int, down: int, base_bytes: int) -> dict:
    return {"setting": setting, "values": values, "bytes_up": up, "bytes_down": down,
            "up_pct_of_base": round(100 * up / base_bytes, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", default="smollm2-135m")
    add_results_option(parser)
    args = parser.parse_args()
    base = load_base(args.base, quantisation="none", device="cpu")
    base_bytes = base.stored_bytes  # the base as shipped (bf16 safetensors): the % column's reference
    rows = [stamen_row(base, setting, base_bytes) for setting in STAMEN_SETTINGS]
    model = attach_adapter(base.model, AdapterSpec(), seed=0)
    flowertune = flowertune_record(get_peft_model_state_dict(model))
    rows.append(row("flowertune full LoRA fp32", sum(a.numpy().size for a in flowertune.values()),
                    flowertune.count_bytes(), flowertune.count_bytes(), base_bytes))
    base.model = model.unload()
    full_values = sum(p.numel() for p in base.model.parameters())
    full_bytes = full_values * np.dtype(np.float32).itemsize  # ~540 MB: counted, not copied
    rows.append(row("full-model FedAvg fp32", full_values, full_bytes, full_bytes, base_bytes))
    reference = rows[-2]["bytes_up"]
    for entry in rows:
        entry["vs_flowertune"] = round(entry["bytes_up"] / reference, 3)
    print_table(rows)
    write_results("communication", rows, args.results, base=args.base, base_stored_bytes=base_bytes)


if __name__ == "__main__":
    main()
