"""Local training really lowers loss on CPU, on unquantised and bitsandbytes-quantised bases."""

import pytest
import torch

from stamen.client.evaluation.loss import evaluate_loss
from stamen.shared.adapters import attach_adapter
from stamen.shared.base_model import load_base
from stamen.shared.config import AdapterSpec, TrainingSpec
from stamen.shared.examples import IGNORE_INDEX, Example, encode_example
from stamen.shared.quantisation import calibration_perplexity, load_causal_lm, most_compact_within_tolerance
from stamen.shared.training import train_adapter

EXAMPLES = [
    Example(prompt="What is your favourite food?", response="I like pizza with fresh cheese."),
    Example(prompt="What do you eat for breakfast?", response="I like bread with fresh fruit."),
    Example(prompt="Do you like cheese?", response="I like cheese on pizza and bread."),
    Example(prompt="What is good to eat?", response="Fresh fruit and bread are good to eat."),
]


@pytest.mark.parametrize("mode", ["nf4", "int8", "none"])
def test_a_few_steps_lower_the_loss(mode, avx512bf16_cpu):
    base = load_base("tiny", quantisation=mode, device="cpu")
    assert base.quantisation.mode == mode
    if mode != "none":
        assert any("bitsandbytes" in type(m).__module__ for m in base.model.modules())
    model = attach_adapter(base.model, AdapterSpec(rank=8), 0)  # default targets: q_proj, v_proj
    spec = TrainingSpec(local_steps=12, batch_size=4, learning_rate=1e-2, lr_schedule="constant")
    before = evaluate_loss(model, base.tokenizer, EXAMPLES, 64, 4).loss
    result = train_adapter(model, base.tokenizer, EXAMPLES, spec, seed=0)
    after = evaluate_loss(model, base.tokenizer, EXAMPLES, 64, 4).loss
    assert result.steps == 12 and result.tokens > 0
    assert after < before - 0.05, (mode, before, after)


@pytest.mark.parametrize("perplexity, chosen", [
    ({"none": 10.0, "nf4": 10.9, "int8": 10.1}, "nf4"),  # nf4 within +10%: the most compact wins
    ({"none": 10.0, "nf4": 11.2, "int8": 10.9}, "int8"),
    ({"none": 10.0, "nf4": 11.2, "int8": 11.1}, "none"),
    ({"none": 10.0, "nf4": 9.0, "int8": 12.0}, "nf4"),  # better than unquantised is within tolerance too
])
def test_auto_takes_the_most_compact_mode_within_tolerance(perplexity, chosen):
    assert most_compact_within_tolerance(perplexity) == chosen


def test_auto_chooses_by_the_perplexities_it_measures_and_caches_the_verdict(tiny_folder):
    measured = {mode: calibration_perplexity(load_causal_lm(tiny_folder, mode, torch.device("cpu")),
                                             load_base("tiny", "none", "cpu").tokenizer)
                for mode in ("none", "nf4", "int8")}
    base = load_base("tiny", quantisation="auto", device="cpu")
    assert base.quantisation.mode == most_compact_within_tolerance(measured)
    for mode, value in measured.items():  # the reason quotes what was measured
        assert f"{mode} {value:.2f}" in base.quantisation.reason
    cached = load_base("tiny", quantisation="auto", device="cpu").quantisation
    assert cached.mode == base.quantisation.mode and cached.reason.endswith("(cached)")


def test_prompt_tokens_are_not_scored(tiny_folder):
    base = load_base("tiny", quantisation="none", device="cpu")
    encoded = encode_example(base.tokenizer, EXAMPLES[0], max_len=256)
    scored = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=False) if label != IGNORE_INDEX]
    text = base.tokenizer.decode(scored)
    assert text.startswith(EXAMPLES[0].response)
    assert EXAMPLES[0].prompt not in text
    assert encoded.labels[: len(encoded.labels) - len(scored)] == [IGNORE_INDEX] * (len(encoded.labels) - len(scored))


def test_a_prompt_longer_than_the_sequence_keeps_its_end_and_part_of_the_response(tiny_folder):
    """Truncating at the end used to cut the whole response of a long prompt: a batch of such examples scored no
    token, and its NaN loss got the client's reply refused."""
    base = load_base("tiny", quantisation="none", device="cpu")
    long = Example(prompt="tell me " * 60 + "the end", response="a short answer")
    encoded = encode_example(base.tokenizer, long, max_len=48)
    scored = [t for t, label in zip(encoded.input_ids, encoded.labels, strict=True) if label != IGNORE_INDEX]
    assert len(encoded.input_ids) == 48 and base.tokenizer.decode(scored).startswith("a short answer")
    short = encode_example(base.tokenizer, EXAMPLES[0], max_len=256)
    assert short == encode_example(base.tokenizer, EXAMPLES[0], max_len=len(short.input_ids))  # fits: unchanged


def test_training_is_reproducible_under_a_seed():
    def run():
        base = load_base("tiny", quantisation="none", device="cpu")
        model = attach_adapter(base.model, AdapterSpec(dropout=0.1), 0)
        train_adapter(model, base.tokenizer, EXAMPLES, TrainingSpec(local_steps=3, batch_size=2), seed=7)
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_kept_optimizer_state_continues_adamw_where_the_last_round_stopped():
    base = load_base("tiny", quantisation="none", device="cpu")
    model = attach_adapter(base.model, AdapterSpec(rank=4, targets=("q_proj", "v_proj")), 0)
    spec = TrainingSpec(local_steps=3, batch_size=2, lr_schedule="constant")
    first = train_adapter(model, base.tokenizer, EXAMPLES, spec, seed=0)
    steps = {k: v.item() for k, v in first.optimizer_state.items() if k.endswith("/step")}
    assert steps and set(steps.values()) == {3.0}
    assert all(abs(v).max() > 0 for k, v in first.optimizer_state.items() if k.endswith("/exp_avg_sq"))
    continued = train_adapter(model, base.tokenizer, EXAMPLES, spec, seed=1, optimizer_state=first.optimizer_state)
    fresh = train_adapter(model, base.tokenizer, EXAMPLES, spec, seed=1)
    assert {v.item() for k, v in continued.optimizer_state.items() if k.endswith("/step")} == {6.0}
    assert {v.item() for k, v in fresh.optimizer_state.items() if k.endswith("/step")} == {3.0}


def test_adalora_reallocates_its_rank_budget_over_a_round_and_keeps_about_half():
    """AdaLoRA's budget falls from lora-rank to half of it per layer over the round's steps: the singular values
    of the pruned triplets are 0 in what the client sends (the server averages them with the others')."""
    base = load_base("tiny", quantisation="none", device="cpu")
    model = attach_adapter(base.model, AdapterSpec(method="adalora", rank=8), 0)
    spec = TrainingSpec(local_steps=6, batch_size=4, learning_rate=1e-2, lr_schedule="constant")
    train_adapter(model, base.tokenizer, EXAMPLES, spec, seed=0)
    singular_values = [p for name, p in model.named_parameters() if "lora_E" in name]
    kept = sum(int((e != 0).sum()) for e in singular_values)
    total = sum(e.numel() for e in singular_values)
    assert total == 8 * len(singular_values)
    assert total // 2 <= kept < 0.75 * total, (kept, total)
