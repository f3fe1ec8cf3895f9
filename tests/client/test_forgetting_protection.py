"""Forgetting measured on the device, and EWC's penalty: hand-computed histories, a real tiny model."""

import pytest
import torch

from stamen.client.ewc import ewc_penalty, fisher_diagonal
from stamen.client.forgetting import forgetting_metrics
from stamen.client.runtime import client_runtime
from stamen.client.state_store import ClientStateStore
from stamen.shared.adapters import adapter_parameters, adapter_state, load_adapter_state
from stamen.shared.config import RunConfig
from stamen.shared.training import train_adapter
from stamen.simulations.partitions import split_corpus
from stamen.simulations.report import against_baseline


def test_forgetting_is_measured_against_the_base_and_the_best_earlier_round(tmp_path):
    store = ClientStateStore(tmp_path)
    calls = []

    def base_alone():
        calls.append(1)
        return 2.0

    assert forgetting_metrics(store, 1, 2.5, base_alone) == {"forgetting": 0.5, "forgetting-vs-best": 0.5}
    assert forgetting_metrics(store, 2, 1.8, base_alone) == {"forgetting": pytest.approx(-0.2),
                                                             "forgetting-vs-best": pytest.approx(-0.2)}
    assert forgetting_metrics(store, 3, 2.1, base_alone) == {"forgetting": pytest.approx(0.1),
                                                             "forgetting-vs-best": pytest.approx(0.3)}
    assert len(calls) == 1  # the base alone is evaluated once per client
    # a replayed round (resume) starts from the history as it stood before that round
    assert forgetting_metrics(store, 3, 2.1, base_alone)["forgetting-vs-best"] == pytest.approx(0.3)


def test_backward_transfer_compares_each_finished_stage_with_its_loss_when_it_ended(tmp_path):
    store = ClientStateStore(tmp_path)
    alone = lambda: 1.0  # noqa: E731
    assert "backward-transfer" not in forgetting_metrics(store, 1, 1.0, alone, stage=0, stage_losses={0: 3.0})
    forgetting_metrics(store, 2, 1.0, alone, stage=0, stage_losses={0: 2.0})  # stage 0 ends at loss 2.0
    third = forgetting_metrics(store, 3, 1.0, alone, stage=1, stage_losses={0: 2.5, 1: 1.5})
    assert third["backward-transfer"] == pytest.approx(2.0 - 2.5)  # stage 0 was partly forgotten
    fourth = forgetting_metrics(store, 4, 1.0, alone, stage=2, stage_losses={0: 2.2, 1: 1.9, 2: 1.0})
    assert fourth["backward-transfer"] == pytest.approx(((2.0 - 2.2) + (1.5 - 1.9)) / 2)


def test_ewc_holds_the_parameters_the_replayed_examples_depend_on(tiny_folder):
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "learning-rate": 0.02,
                                    "local-steps": 6, "seed": 0})
    runtime = client_runtime(config)
    model, tokenizer, spec = runtime.model, runtime.base.tokenizer, config.training
    old, new = split_corpus(2, 0).clients
    fisher = fisher_diagonal(model, tokenizer, list(old.train), spec.max_seq_len, spec.batch_size)
    assert set(fisher) == set(adapter_parameters(model))
    values = torch.cat([f.flatten() for f in fisher.values()])
    assert values.min() >= 0 and values.mean().item() == pytest.approx(1.0)

    start = adapter_state(model)
    moved = {}
    for strength in (0.0, 50.0):
        load_adapter_state(model, {k: v.numpy() for k, v in start.items()}, partial=True)
        penalty = ewc_penalty(strength, fisher, start)
        train_adapter(model, tokenizer, list(new.train), spec, seed=1, corrections=(penalty,))
        after = adapter_state(model)
        moved[strength] = sum(float((fisher[k] * (after[k] - start[k]) ** 2).sum()) for k in start)
    load_adapter_state(model, {k: v.numpy() for k, v in start.items()}, partial=True)
    assert moved[50.0] < 0.5 * moved[0.0]


def test_runs_are_measured_against_a_baseline_run():
    rows = [
        {"run": "none", "forgetting_mean": 0.8, "mean_client_gain": 2.0, "client_seconds": 10.0},
        {"run": "anchor", "forgetting_mean": 0.2, "mean_client_gain": 1.9, "client_seconds": 10.5},
        {"run": "broken", "forgetting_mean": None, "mean_client_gain": None, "client_seconds": None},
    ]
    none, anchor, broken = against_baseline(rows, "none")
    assert (none["forgetting_cut"], none["gain_kept"], none["extra_client_time"]) == (0.0, 100.0, 0.0)
    assert (anchor["forgetting_cut"], anchor["gain_kept"], anchor["extra_client_time"]) == (75.0, 95.0, 5.0)
    assert broken["forgetting_cut"] is None and broken["gain_kept"] is None
    with pytest.raises(ValueError, match="baseline run 'ewc'"):
        against_baseline(rows, "ewc")
