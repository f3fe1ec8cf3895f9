"""Quantised bases train whatever ran before, on every CPU (docs/nf4-on-cpu.md).

The ``avx512bf16_cpu`` fixture puts bitsandbytes on the code path it takes on a CPU with
AVX512-BF16 (repacked 4-bit weights, a fused kernel with no autograd) on any CPU."""

import pytest
import torch

from stamen.client.evaluation.loss import evaluate_loss
from stamen.shared.adapters import attach_adapter
from stamen.shared.base_model import load_base
from stamen.shared.config import AdapterSpec, TrainingSpec
from stamen.shared.examples import Example
from stamen.shared.quantisation import packed_4bit_layers
from stamen.shared.training import NothingTrained, train_adapter

EXAMPLES = [
    Example(prompt="What is my cat called?", response="Your cat is called Miso."),
    Example(prompt="Where do I work?", response="You work at the harbour library."),
    Example(prompt="What do I eat for breakfast?", response="You eat bread with fresh fruit."),
    Example(prompt="Which day do I swim?", response="You swim every Sunday morning."),
]
SPEC = TrainingSpec(local_steps=8, batch_size=4, learning_rate=1e-2, lr_schedule="constant")


def _loss(model, tokenizer) -> float:
    return evaluate_loss(model, tokenizer, EXAMPLES, 64, 4).loss


def _adapted(mode: str, trainable: bool = True):
    base = load_base("tiny", quantisation=mode, device="cpu", trainable=trainable)
    return attach_adapter(base.model, AdapterSpec(rank=8), 0), base.tokenizer  # default targets: q_proj, v_proj


def test_the_forced_path_is_the_packed_kernel_and_cuts_training(avx512bf16_cpu):
    reference, tokenizer = _adapted("nf4")
    packed, _ = _adapted("nf4", trainable=False)
    assert not packed_4bit_layers(packed)
    inference_loss = _loss(packed, tokenizer)
    layers = packed_4bit_layers(packed)
    assert len(layers) == 14  # 2 layers x (q, k, v, o, gate, up, down): every 4-bit weight was repacked
    assert inference_loss == pytest.approx(_loss(reference, tokenizer), rel=1e-2)  # bf16 kernel, same model
    with pytest.raises(NothingTrained, match="repacked for bitsandbytes' CPU inference kernel"):
        train_adapter(packed, tokenizer, EXAMPLES, SPEC, seed=0)
    assert not packed_4bit_layers(reference)  # a trainable base never repacks, however often it evaluates


@pytest.mark.parametrize("mode", ["nf4", "int8", "none"])
def test_loss_falls_in_every_order_of_evaluation_and_training(mode, avx512bf16_cpu):
    model, tokenizer = _adapted(mode)
    losses = [_loss(model, tokenizer)]  # evaluate -> train -> evaluate -> train -> evaluate
    for seed in (0, 1):
        result = train_adapter(model, tokenizer, EXAMPLES, SPEC, seed=seed)
        assert result.optimizer_state, "AdamW kept no moments: no parameter received a gradient"
        losses.append(_loss(model, tokenizer))
    assert losses[1] < losses[0] - 0.05 and losses[2] < losses[1] - 0.05, (mode, losses)


def test_a_step_whose_graph_never_reaches_the_adapter_is_an_error():
    model, tokenizer = _adapted("none")
    for layer in model.base_model.model.model.layers:  # every path from the adapter to the loss cut
        layer.self_attn.register_forward_hook(lambda module, inputs, output: (output[0].detach(), *output[1:]))
    with pytest.raises(NothingTrained, match="no adapter parameter received a gradient in step 1: the graph"):
        train_adapter(model, tokenizer, EXAMPLES, SPEC, seed=0)


def test_a_round_whose_gradients_are_all_zero_is_an_error_not_an_all_zero_update():
    model, tokenizer = _adapted("none")
    for layer in model.base_model.model.model.layers:  # every path from the adapter to the loss multiplied by 0
        layer.self_attn.register_forward_hook(lambda module, inputs, output: (output[0] * 0, *output[1:]))
    with pytest.raises(NothingTrained, match=f"{SPEC.local_steps} steps left every adapter value as it was"):
        train_adapter(model, tokenizer, EXAMPLES, SPEC, seed=0)


def test_later_steps_with_all_zero_gradients_are_counted_and_training_goes_on():
    """A batch the adapter already fits exactly gives a zero gradient: counted, not mistaken for a cut graph."""
    model, tokenizer = _adapted("none")
    calls = []

    def zero_after_the_first_step(module, inputs, output):
        calls.append(1)
        first_step = len(calls) <= len(model.base_model.model.model.layers) * SPEC.grad_accum
        return output if first_step else (output[0] * 0, *output[1:])

    for layer in model.base_model.model.model.layers:
        layer.self_attn.register_forward_hook(zero_after_the_first_step)
    result = train_adapter(model, tokenizer, EXAMPLES, SPEC, seed=0)
    assert result.flat_steps == SPEC.local_steps - 1


def test_training_that_changes_nothing_is_an_error():
    model, tokenizer = _adapted("none")
    warmup_only = TrainingSpec(local_steps=1, warmup_steps=4, lr_schedule="linear")  # its one step runs at lr 0
    with pytest.raises(NothingTrained, match="left every adapter value as it was"):
        train_adapter(model, tokenizer, EXAMPLES, warmup_only, seed=0)


def test_a_base_loaded_for_inference_refuses_to_personalise(tiny_folder):
    from stamen.client import PersonalModel

    model = PersonalModel.load("tiny", quantisation="nf4", trainable=False)
    with pytest.raises(ValueError, match="trainable=False"):
        model.personalise(["a line"], steps=1)
    assert torch.isfinite(torch.tensor(model.score(["a line of text"])))
