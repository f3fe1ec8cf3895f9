"""WiSE-FT interpolation: base + alpha x the adapter, exact per layer for LoRA and IA3, and the rule a device
picks alpha by."""

import gguf
import numpy as np
import pytest
import torch

from stamen.client.edge import PersonalModel
from stamen.shared.adapters import adapter_parameters
from stamen.shared.config import AdapterSpec
from stamen.shared.interpolation import (
    InterpolationError,
    interpolate_adapter,
    largest_alpha_retaining,
    smallest_alpha_keeping,
)


def _trained_looking(model, seed: int = 0) -> None:
    """Every adapter tensor moved off its initial value, as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in adapter_parameters(model).values():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.3)


@pytest.mark.parametrize(("method", "targets"), [("lora", ("q_proj", "v_proj")), ("ia3", ("k_proj", "down_proj"))])
def test_each_adapted_layer_outputs_base_plus_alpha_times_its_change(method, targets, tiny_folder):
    model = PersonalModel.load("tiny", quantisation="none", spec=AdapterSpec(method=method, targets=targets)).model
    _trained_looking(model)
    layers = {name: module for name, module in model.named_modules() if name.endswith(targets)}
    inputs = {name: torch.randn(3, module.in_features, generator=torch.Generator().manual_seed(1))
              for name, module in layers.items()}

    def outputs() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {name: module(inputs[name]) for name, module in layers.items()}

    trained = {name: p.detach().clone() for name, p in model.named_parameters() if "lora_B" in name or "ia3_l" in name}
    full = outputs()
    interpolate_adapter(model, 0.0, trained)
    base = outputs()
    assert all(not torch.allclose(full[name], base[name]) for name in layers)  # the adapter changed every layer
    interpolate_adapter(model, 0.3, trained)
    for name, output in outputs().items():
        torch.testing.assert_close(output, base[name] + 0.3 * (full[name] - base[name]), atol=1e-5, rtol=1e-5)


def test_adapters_with_no_exact_interpolation_are_refused_by_name(tiny_folder):
    model = PersonalModel.load("tiny", quantisation="none", spec=AdapterSpec(method="dora"))
    with pytest.raises(InterpolationError, match="DoRA"):
        model.interpolate(0.5)


def test_a_device_takes_the_least_alpha_that_keeps_the_gain_it_asks_for():
    def loss(curve):
        asked = []

        def loss_at(alpha: float) -> float:
            asked.append(alpha)
            return curve(alpha)

        return loss_at, asked

    saturating, asked = loss(lambda a: 3.0 - 2.0 * a**0.25)  # most of the gain comes early
    alpha, losses = smallest_alpha_keeping(saturating, 0.9)
    assert alpha == 0.75 and asked == [0.0, 1.0, 0.25, 0.5, 0.75] and set(losses) == set(asked)
    assert smallest_alpha_keeping(loss(lambda a: 3.0 - 2.0 * a**0.25)[0], 0.8)[0] == 0.5
    assert smallest_alpha_keeping(loss(lambda a: 3.0 - a)[0], 0.9)[0] == 1.0  # linear: nothing less keeps 90%
    assert smallest_alpha_keeping(loss(lambda a: 3.0 + a)[0], 0.9)[0] == 0.0  # an adapter that only hurts


def test_a_device_takes_the_largest_alpha_that_still_knows_what_the_base_knew():
    asked = []

    def forgetting_past(edge: float):  # all facts kept up to ``edge``, then fewer the further from the base
        def retention_at(alpha: float) -> float:
            asked.append(alpha)
            return 1.0 if alpha <= edge else max(0.0, 1.0 - (alpha - edge))

        return retention_at

    alpha, retained = largest_alpha_retaining(forgetting_past(0.5), 0.95)
    assert alpha == 0.5 and set(retained) == set(asked)  # the grid, then the sixteenths up to the alpha that forgot
    assert asked == [1.0, 0.75, 0.5, 0.6875, 0.625, 0.5625]
    asked.clear()
    assert largest_alpha_retaining(forgetting_past(0.3), 0.98)[0] == 0.3125  # between 0.25 and 0.5, in sixteenths
    assert asked == [1.0, 0.75, 0.5, 0.25, 0.4375, 0.375, 0.3125]
    assert largest_alpha_retaining(forgetting_past(0.1), 0.99)[0] == 0.0625  # below the grid's first step
    assert largest_alpha_retaining(lambda a: 1.0, 0.95, at_most=0.5) == (0.5, {0.5: 1.0})  # never above the cap
    assert largest_alpha_retaining(lambda a: 0.0, 0.5)[0] == 0.0  # forgets at every alpha: the base


def test_an_interpolated_personal_model_exports_what_it_uses(tmp_path, tiny_folder):
    personal = PersonalModel.load("tiny", quantisation="none")
    examples = [{"prompt": f"What is my cat called? ({n})", "response": "Miso."} for n in range(8)]
    personal.personalise(examples, steps=8, learning_rate=1e-2)
    trained = personal.score(examples)
    alpha = personal.choose_alpha(examples, keep_gain=0.5)
    assert alpha in (0.25, 0.5, 0.75)  # part of the way from the base
    used = personal.score(examples)
    assert trained < used
    again = PersonalModel.load("tiny", quantisation="none", adapter=personal.export(tmp_path / "wise"))
    assert again.score(examples) == pytest.approx(used, abs=1e-5)
    # llama.cpp's file carries the same B: alpha x the trained one
    used_b = _gguf_tensors(personal.export(tmp_path / "gguf", format="gguf"))
    personal.interpolate(1.0)
    trained_b = _gguf_tensors(personal.export(tmp_path / "trained", format="gguf"))
    assert set(used_b) == set(trained_b) and len(used_b) > 0
    for name, tensor in trained_b.items():
        np.testing.assert_allclose(used_b[name], alpha * tensor, rtol=1e-3, atol=1e-6)


def _gguf_tensors(path) -> dict[str, np.ndarray]:
    return {t.name: np.array(t.data, dtype=np.float32) for t in gguf.GGUFReader(path).tensors
            if t.name.endswith("lora_b")}
