"""Forgetting measured on the device, and EWC's penalty: hand-computed histories, a real tiny model."""

import pytest
import torch

from stamen.client.evaluation.forgetting import NEUTRAL, forgetting_metrics
from stamen.client.evaluation.loss import evaluate_loss
from stamen.client.loaded_base import client_runtime
from stamen.client.replay.ewc import ewc_penalty, fisher_diagonal
from stamen.client.state_store import ClientStateStore
from stamen.shared.adapters import adapter_parameters, adapter_state, base_alone, load_adapter_state
from stamen.shared.config import RunConfig
from stamen.shared.distillation import Distillation, kl_to_teacher
from stamen.shared.examples import IGNORE_INDEX, collate, encode_example
from stamen.shared.training import train_adapter
from stamen.simulations.comparison import against_baseline
from stamen.simulations.partitions import client_datasets


def test_forgetting_is_measured_on_general_text_against_the_base_and_the_best_earlier_round(tmp_path):
    store = ClientStateStore(tmp_path)
    calls = []

    def base_alone():
        calls.append(1)
        return {"general-text": 2.0}

    def losses(general: float) -> dict[str, float]:
        return {"general-text": general}

    assert forgetting_metrics(store, 1, losses(2.5), base_alone) == {"forgetting": 0.5, "forgetting-vs-best": 0.5}
    second = forgetting_metrics(store, 2, losses(1.8), base_alone)
    assert (second["forgetting"], second["forgetting-vs-best"]) == (pytest.approx(-0.2), pytest.approx(-0.2))
    third = forgetting_metrics(store, 3, losses(2.1), base_alone)
    assert (third["forgetting"], third["forgetting-vs-best"]) == (pytest.approx(0.1), pytest.approx(0.3))
    assert len(calls) == 1  # the base alone is evaluated once per client
    # a replayed round (resume) starts from the history as it stood before that round
    assert forgetting_metrics(store, 3, losses(2.1), base_alone)["forgetting-vs-best"] == pytest.approx(0.3)


def test_backward_transfer_compares_each_finished_stage_with_its_loss_when_it_ended(tmp_path):
    store = ClientStateStore(tmp_path)
    alone = lambda: {"general-text": 1.0}  # noqa: E731
    same = {"general-text": 1.0}
    assert "backward-transfer" not in forgetting_metrics(store, 1, same, alone, stage=0, stage_losses={0: 3.0})
    forgetting_metrics(store, 2, same, alone, stage=0, stage_losses={0: 2.0})  # stage 0 ends at loss 2.0
    third = forgetting_metrics(store, 3, same, alone, stage=1, stage_losses={0: 2.5, 1: 1.5})
    assert third["backward-transfer"] == pytest.approx(2.0 - 2.5)  # stage 0 was partly forgotten
    fourth = forgetting_metrics(store, 4, same, alone, stage=2, stage_losses={0: 2.2, 1: 1.9, 2: 1.0})
    assert fourth["backward-transfer"] == pytest.approx(((2.0 - 2.2) + (1.5 - 1.9)) / 2)


def test_ewc_holds_the_parameters_the_replayed_examples_depend_on(tiny_folder):
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "learning-rate": 0.02,
                                    "local-steps": 6, "seed": 0})
    runtime = client_runtime(config)
    model, tokenizer, spec = runtime.model, runtime.base.tokenizer, config.training
    old, new = client_datasets(2, 0)
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


def test_runs_are_measured_against_a_baseline_run_seed_by_seed():
    def seed(forgetting, gain, seconds, personal=3.0, retention=None, transfer=None):
        return {"forgetting_mean": forgetting, "mean_client_gain": gain, "client_seconds": seconds,
                "personal_end": personal, "retention_mean": retention, "backward_transfer_end": transfer}

    none = [seed(0.8, 2.0, 10.0, retention=0.6, transfer=-0.3), seed(0.4, 1.0, 20.0, retention=0.5, transfer=-0.3)]
    anchor = [seed(0.2, 1.9, 10.5, 2.9, retention=0.9, transfer=-0.1),
              seed(0.2, 1.0, 20.0, 2.7, retention=0.8, transfer=0.0)]
    compared = against_baseline(anchor, none)
    assert compared["forgetting_cut"] == {"mean": 62.5, "ci95": pytest.approx(12.706 * 12.5, rel=1e-3), "n": 2}
    assert (compared["gain_kept"]["mean"], compared["extra_client_time"]["mean"]) == (97.5, 2.5)
    assert compared["personal_end_change"]["mean"] == pytest.approx(-0.2)
    # of the questions the baseline lost (40%, 50%), the protected run still answers 30/40 and 30/50
    assert compared["retention_loss_cut"]["mean"] == pytest.approx(67.5)
    assert compared["backward_transfer_change"]["mean"] == pytest.approx(0.25)  # older stages kept better
    itself = against_baseline(none, none)
    assert (itself["forgetting_cut"]["mean"], itself["gain_kept"]["mean"]) == (0.0, 100.0)
    broken = against_baseline([seed(None, None, None, None)] * 2, none)
    assert broken == {"personal_end_change": None, "backward_transfer_change": None, "forgetting_cut": None,
                      "retention_loss_cut": None, "gain_kept": None, "extra_client_time": None}
    # a baseline that lost nothing on a measure has no cut on it: improved on general text, kept every question
    no_forgetting = [seed(-0.1, 2.0, 10.0, retention=1.0), seed(0.0, 1.0, 20.0, retention=1.0)]
    assert against_baseline(anchor, no_forgetting)["forgetting_cut"] is None
    assert against_baseline(anchor, no_forgetting)["retention_loss_cut"] is None
    # a baseline measured on more seeds pairs over the seeds both ran: seed n against seed n
    assert against_baseline(anchor[:1], none)["gain_kept"] == {"mean": pytest.approx(95.0), "ci95": None, "n": 1}


def test_distillation_holds_the_models_view_of_replayed_prompts_to_the_bases_and_still_learns(tiny_folder):
    """LwF on replayed rows: after training on new data, the model's next-token distribution on the replayed
    examples stays closer to the frozen base's than without replay or with their text replayed, and the new
    data's loss still falls."""
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "learning-rate": 0.02,
                                    "local-steps": 8, "seed": 0})
    runtime = client_runtime(config)
    model, tokenizer, spec = runtime.model, runtime.base.tokenizer, config.training
    old, new = client_datasets(2, 0)
    replayed = list(old.train)[:8]
    batch = collate([encode_example(tokenizer, e, spec.max_seq_len) for e in replayed], tokenizer.pad_token_id)
    scored = batch["labels"][:, 1:] != IGNORE_INDEX

    def drift() -> float:
        """KL(base || model) on the replayed examples' response positions."""
        with torch.no_grad():
            own = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
            with base_alone(model):
                base = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return kl_to_teacher(own[scored], base[scored], 1.0).item()

    def held_out() -> float:
        return evaluate_loss(model, tokenizer, list(new.heldout), spec.max_seq_len, spec.eval_batch_size).loss

    start = {k: v.numpy() for k, v in adapter_state(model).items()}
    outcome = {}
    for name, replay, distillation in (("none", [], None), ("text", replayed, None),
                                       ("distill", replayed, Distillation(weight=8.0, temperature=1.0))):
        load_adapter_state(model, start, partial=True)
        before = held_out()
        train_adapter(model, tokenizer, list(new.train), spec, seed=1, replay=replay, replay_ratio=0.5,
                      distillation=distillation)
        outcome[name] = (drift(), before - held_out())
    load_adapter_state(model, start, partial=True)
    assert outcome["none"][0] > 0 and outcome["distill"][0] < 0.5 * min(outcome["none"][0], outcome["text"][0])
    # the new data is still learnt (at weight 8 the tiny base keeps about half its gain: the pull has a price)
    assert outcome["distill"][1] > 0.3 * outcome["none"][1] > 0


def test_each_known_facts_answer_is_kept_in_the_clients_history_and_a_comparison_reads_them_over_facts_and_seeds(
        tmp_path):
    """A client's forgetting history keeps, round by round, which known facts the model it used still answered; a
    run folder's clients are read back fact by fact, and a comparison reports retention and its cut against the
    baseline over facts and seeds."""
    from stamen.client.state_store import ClientStateStore
    from stamen.simulations.comparison import fact_retention, retention_loss_cut
    from stamen.simulations.report import RunRecord

    def run(name: str, kept: dict[str, list[bool]]) -> RunRecord:
        for client, answers in (("alice", kept), ("bob", kept)):
            store = ClientStateStore(tmp_path / name / "clients" / client)
            for server_round, answered in enumerate(zip(*answers.values(), strict=True), start=1):
                forgetting_metrics(store, server_round, {NEUTRAL: 2.0}, lambda: {NEUTRAL: 2.0},
                                   answered=dict(zip(answers, answered, strict=True)))
        return RunRecord(tmp_path / name, [], [], {}, None)

    questions = [f"q{i}" for i in range(20)]
    base = run("none", {q: [i % 2 == 0, i % 4 == 0] for i, q in enumerate(questions)})  # lost half, then more
    protected = run("replay", {q: [i % 2 == 0, i % 2 == 0] for i, q in enumerate(questions)})
    assert base.fact_retention()["q0"] == 1.0 and base.fact_retention()["q2"] == 0.5  # over clients and rounds
    assert protected.fact_retention()["q1"] == 0.0 and len(protected.fact_retention()) == 20
    kept = fact_retention([protected.fact_retention()] * 3)["retention_facts"]
    assert kept["mean"] == pytest.approx(0.5) and kept["ci95"] > 0.1 and kept["facts"] == 20
    cut = retention_loss_cut([protected.fact_retention()] * 3, [base.fact_retention()] * 3)
    assert cut["retention_loss_cut_facts"]["mean"] == pytest.approx(100 * (0.5 - 0.375) / 0.625)
