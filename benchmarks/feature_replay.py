"""Feature replay for causal-LM adapters: what caching the base's activations at the adapter inputs would store,
and how stale those activations are once the adapter has trained.

Feature replay (replaying cached layer inputs instead of raw examples) pays when the adapted layers sit on top of a
frozen feature extractor: the inputs never change and the forward below them is skipped. In a causal LM with LoRA
on every layer's attention, each layer's input depends on every adapter below it, so a cached base activation is
the wrong input as soon as training moves an adapter, and the forward pass from the first adapted layer up is
needed anyway. This measures both on the embedded base: the default LoRA (q_proj, v_proj in every layer) trained
on one topic, then the replayed examples (another topic) run with the adapter and with the base alone.

    python benchmarks/feature_replay.py [--steps 24] [--base smollm2-135m]
"""

from __future__ import annotations

import argparse

import torch
from report import add_results_option, print_table, write_results

from stamen.client.edge import PersonalModel
from stamen.shared.adapters import base_alone
from stamen.shared.corpus import load_topics
from stamen.shared.examples import collate, encode_example

MAX_LEN = 64


def adapter_inputs(model, batch) -> dict[int, torch.Tensor]:
    """The input of each layer's q_proj (v_proj shares it), by layer, at the attended positions."""
    captured, hooks = {}, []
    for name, module in model.named_modules():
        if name.endswith("self_attn.q_proj"):
            layer = int(name.split(".layers.")[1].split(".")[0])
            hooks.append(module.register_forward_pre_hook(
                lambda _m, args, layer=layer: captured.__setitem__(layer, args[0].detach().clone())))
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for hook in hooks:
        hook.remove()
    mask = batch["attention_mask"].bool()
    return {layer: value[mask] for layer, value in captured.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--base", default="smollm2-135m")
    add_results_option(parser)
    args = parser.parse_args()
    torch.manual_seed(0)
    topics = load_topics()
    trained_on, replayed = (list(topics[name]) for name in sorted(topics, key=lambda n: -len(topics[n]))[:2])
    model = PersonalModel.load(args.base, quantisation="none")
    model.personalise(trained_on, steps=args.steps, learning_rate=3e-3)
    tokenizer = model.base.tokenizer
    examples = replayed[:16]
    batch = collate([encode_example(tokenizer, e, MAX_LEN) for e in examples], tokenizer.pad_token_id)
    adapted = adapter_inputs(model.model, batch)
    with base_alone(model.model):
        cached = adapter_inputs(model.model, batch)
    rows = []
    for layer in sorted(adapted):
        drift = (adapted[layer] - cached[layer]).norm(dim=-1) / adapted[layer].norm(dim=-1)
        rows.append({"layer": layer, "median_relative_drift": round(drift.median().item(), 4),
                     "max_relative_drift": round(drift.max().item(), 4)})
    tokens = int(batch["attention_mask"].sum())
    hidden = next(iter(cached.values())).shape[-1]
    text_bytes = sum(len(e.response.encode()) + len((e.prompt or "").encode()) for e in examples)
    feature_bytes = tokens * hidden * len(cached) * 2  # fp16, one input per layer (q and v share it)
    print_table(rows)
    summary = {"examples": len(examples), "tokens": tokens, "adapted_layers": len(cached), "hidden": hidden,
               "text_bytes_per_example": round(text_bytes / len(examples), 1),
               "feature_bytes_per_example": round(feature_bytes / len(examples)),
               "feature_vs_text_bytes": round(feature_bytes / text_bytes)}
    print(summary)
    write_results("feature_replay", rows, args.results, base=args.base, steps=args.steps, **summary)


if __name__ == "__main__":
    main()
