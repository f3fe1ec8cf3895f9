"""Every registered plug-in meets its kind's contract: a new rule, attack, LoRA mode or PEFT method brings these
tests with it by being registered, with nothing to list here."""

import sys

import numpy as np
import pytest

from stamen.server.rules import RULES, ClientUpdate, make_rule
from stamen.shared.lora_modes import LORA_MODES
from stamen.shared.peft_methods import PEFT_METHODS
from stamen.simulations.attacks import ATTACKS, make_attack

GLOBAL = {"layer.lora_A.weight": np.array([[1.0, -2.0], [0.5, 0.25]], np.float32),
          "layer.lora_B.weight": np.array([[0.0, 0.5], [-1.0, 2.0]], np.float32)}


CLIENTS = 8  # enough for every robust rule's assumption (Bulyan: n >= 4f + 3)


def _updates(round_number: int, extra_uploads: tuple[str, ...], equal_weights: bool = False) -> list[ClientUpdate]:
    rng = np.random.default_rng(round_number)
    updates = []
    for client in range(CLIENTS):
        delta = {k: (0.1 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
        extras = {name: {k: (0.05 * rng.standard_normal(v.shape)).astype(np.float32) for k, v in GLOBAL.items()}
                  for name in extra_uploads}
        updates.append(ClientUpdate(f"client-{client}", delta, 2.0 if equal_weights else float(1 + client), extras))
    return updates


def _round(rule, round_number: int, adapter: dict) -> dict:
    rule.start_round(round_number, CLIENTS)
    for update in _updates(round_number, rule.extra_uploads):
        rule.add(update)
    if rule.needs_root_update:
        rule.set_root_update({k: np.full(v.shape, 0.05, np.float32) for k, v in adapter.items()})
    return rule.finish_round(adapter)


@pytest.mark.parametrize("name", sorted(RULES))
def test_every_rule_folds_a_round_and_resumes_from_its_state_exactly(name):
    """One round moves the adapter (finite, same tensors); a rule restored from its state after two rounds gives
    the third round's adapter bit for bit, as an uninterrupted run would."""
    first = make_rule(name)
    first.initialise(GLOBAL)
    one = _round(first, 1, GLOBAL)
    assert set(one) == set(GLOBAL) and all(one[k].shape == GLOBAL[k].shape for k in GLOBAL)
    assert all(np.isfinite(v).all() for v in one.values())
    assert any(not np.array_equal(one[k], GLOBAL[k]) for k in GLOBAL), f"{name} did not move the adapter"
    two = _round(first, 2, one)
    restored = make_rule(name)
    restored.initialise(GLOBAL)
    restored.load_state_dict(first.state_dict())
    third, again = _round(first, 3, two), _round(restored, 3, two)
    for k in GLOBAL:
        np.testing.assert_array_equal(third[k], again[k])


@pytest.mark.parametrize("name", sorted(name for name, rule in RULES.items() if rule.takes_sums()))
def test_every_rule_that_takes_sums_gives_the_same_adapter_from_one_secure_sum(name):
    """Under secure aggregation the server holds only the weighted sum: a rule that says it takes sums must move
    the adapter from it as it does from the single updates (up to float rounding), given equal weights (SCAFFOLD's
    plain mean is uniform, its secure one weighted by the secure weights)."""
    single, summed = make_rule(name), make_rule(name)
    for rule in (single, summed):
        rule.initialise(GLOBAL)
        rule.start_round(1, CLIENTS)
    updates = _updates(1, single.extra_uploads, equal_weights=True)
    for update in updates:
        single.add(update)
    total = sum(u.weight for u in updates)
    weighted = {k: sum(u.weight * u.delta[k].astype(np.float64) for u in updates) for k in GLOBAL}
    extras = {name: {k: sum(u.weight * u.extras[name][k].astype(np.float64) for u in updates) for k in GLOBAL}
              for name in single.extra_uploads}
    summed.add_sum(weighted, total, len(updates), extras or None)
    a, b = single.finish_round(GLOBAL), summed.finish_round(GLOBAL)
    for k in GLOBAL:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_every_attack_changes_what_it_poisons_and_is_reproducible_from_its_seed(name):
    """An attack that changes nothing would make a robustness table measure honest clients."""
    from stamen.shared.examples import Example

    attack = make_attack(name)
    delta = {k: v.copy() for k, v in _updates(1, ())[0].delta.items()}
    examples = tuple(Example(prompt=f"question {i}?", response=f"answer {i}.") for i in range(8))
    poisoned = [attack.poison_update({k: v.copy() for k, v in delta.items()}, np.random.default_rng(7))
                for _ in range(2)]
    data = [attack.poison_data(examples, np.random.default_rng(7)) for _ in range(2)]
    update_changed = any(not np.array_equal(poisoned[0][k], delta[k], equal_nan=False) for k in delta)
    assert update_changed or data[0] != examples, f"attack {name} poisons neither its data nor its update"
    for k in delta:
        np.testing.assert_array_equal(poisoned[0][k], poisoned[1][k])
    assert data[0] == data[1]
    assert (attack.__doc__ or "").strip(), f"attack {name} explains nothing"


@pytest.mark.parametrize("name", sorted(LORA_MODES))
def test_every_lora_mode_sends_something_and_keeps_no_tensor_both_frozen_and_personal(name):
    mode = LORA_MODES[name]
    names = list(GLOBAL)
    assert not any(mode.is_frozen(n) and mode.is_personal(n) for n in names)
    assert any(not mode.is_frozen(n) and not mode.is_personal(n) for n in names), f"{name} sends nothing"
    assert mode.methods is None or set(mode.methods) <= set(PEFT_METHODS)
    assert (sys.modules[mode.__module__].__doc__ or "").strip(), f"lora mode {name} explains nothing"


@pytest.mark.parametrize("name", sorted(PEFT_METHODS))
def test_every_peft_method_builds_a_config_from_the_default_spec(name):
    from stamen.shared.config import AdapterSpec

    method = PEFT_METHODS[name]
    config = method.peft_config(AdapterSpec(method=name))
    assert type(config).__module__.startswith("peft"), f"{name} built no PEFT config"
    assert set(AdapterSpec().targets) <= set(config.target_modules), f"{name} ignores lora-targets"
    assert (sys.modules[method.__module__].__doc__ or "").strip(), f"PEFT method {name} explains nothing"
