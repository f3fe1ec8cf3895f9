"""The neutral forgetting probes: hand-written facts the base knows, human prose no one trains on."""

from __future__ import annotations

import json

import pytest
import torch
from inprocess_grid import simulate_in_this_process

from stamen.client import wise
from stamen.client.evaluation import neutral_probes
from stamen.client.evaluation import probes as probes_module
from stamen.client.evaluation.loss import EvalResult, evaluate_loss
from stamen.client.evaluation.neutral_probes import answered, facts, general_text, known_facts, retention
from stamen.client.evaluation.probes import base_alone_losses, base_loss_file, model_probes
from stamen.client.loaded_base import ClientRuntime, client_runtime
from stamen.client.replay.self_replay import SEED_PROMPTS
from stamen.client.wise import model_in_use
from stamen.shared.adapters import adapter_state, attach_adapter, base_alone, load_adapter_state
from stamen.shared.base_model import load_base
from stamen.shared.config import RunConfig
from stamen.shared.corpus import corpus_folder, load_topics
from stamen.shared.examples import Example, collate, encode_example
from stamen.shared.run_folder import RunFolder
from stamen.shared.training import train_adapter


def test_a_reply_is_correct_when_an_accepted_answer_appears_in_it_as_whole_words():
    assert answered("The capital of France is Paris.", ("Paris",))
    assert not answered("Parisian cafes are lovely.", ("Paris",))
    assert answered("A week has 7 days.", ("seven", "7")) and answered("Seven days.", ("seven", "7"))
    assert answered("There are twenty-four hours in a day", ("twenty four",))
    assert answered("ZÜRICH, of course!", ("Zurich",)) and answered("It is the Sun.", ("the Sun",))
    assert not answered("", ("Paris",)) and not answered("I know nothing.", ("no",))


_STOP = frozenset({"a", "an", "the", "is", "are", "was", "were", "of", "in", "on", "at", "to", "for", "by", "with",
                   "from", "what", "which", "who", "whom", "whose", "how", "many", "much", "do", "does", "did",
                   "you", "your", "we", "our", "it", "its", "this", "that", "these", "those", "be", "called",
                   "call", "and", "or", "as", "into", "out", "about", "after", "before", "than", "most", "more",
                   "some", "any", "one", "name", "named", "known", "kind", "type", "have", "has", "there"})
_SAME = {"biggest": "largest", "big": "large", "huge": "large", "tallest": "highest", "tall": "high"}


def _content_words(words: list[str]) -> set[str]:
    """The words that carry a text's meaning: stop words out, a plural's s dropped, common synonyms merged."""
    kept = set()
    for word in words:
        if word not in _STOP:
            word = word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word
            kept.add(_SAME.get(word, word))
    return kept


class _Text:
    """A text read once: its normalised words and the ones that carry its meaning."""

    def __init__(self, text: str) -> None:
        self.words = neutral_probes.normalise(text)
        self.content = _content_words(self.words)
        self.joined = f" {' '.join(self.words)} "


def _teaches(fact, text: _Text) -> bool:
    """Whether ``text`` states ``fact``, word for word or paraphrased: one of its answers, with at least half the
    words that carry its question ("Which planet is the hottest?" / "Venus is the hottest planet")."""
    words = _content_words(neutral_probes.normalise(fact.question))
    if len(words & text.content) < max(1, (len(words) + 1) // 2):
        return False
    return any(f" {' '.join(neutral_probes.normalise(answer))} " in text.joined for answer in fact.answers)


def test_the_probes_are_large_and_come_from_no_training_data_no_replay_source_and_not_from_the_base():
    """Issue: 40 measured facts, 19 of them capitals; a trivia question paraphrased one measured fact and repeated
    another word for word, and only the prose was checked against the corpus. Now: at least 300 facts of at least
    10 kinds, none over 15% of the probe, and no fact stated in any text a client can train on (every corpus topic
    in every language: what clients, `stamen example-data` and the anchor set draw from) or a replay source starts
    from (self-replay's prompts)."""
    every = facts()
    kinds = {fact.kind for fact in every}
    assert len(every) >= 300 and len({fact.question for fact in every}) == len(every) and all(f.answers for f in every)
    assert len(kinds) >= 10 and all(sum(f.kind == kind for f in every) <= 0.15 * len(every) for kind in kinds)
    assert {fact.kind for fact in every[:len(kinds)]} == kinds  # the first facts measured span every kind
    languages = [folder.name for folder in corpus_folder().parent.iterdir() if folder.is_dir()]
    texts = [f"{e.prompt or ''} {e.response}" for language in languages
             for examples in load_topics(language).values() for e in examples] + list(SEED_PROMPTS)
    read = [_Text(text) for text in texts]
    taught = [(fact.question, " ".join(text.words)[:80]) for fact in every for text in read if _teaches(fact, text)]
    assert not taught, taught[:5]
    trivia = _Text("What is the largest planet in our solar system? Jupiter")  # the word-for-word overlap
    ocean = _Text("The Pacific is the biggest ocean on Earth.")  # ... and its paraphrase
    assert _teaches(neutral_probes.Fact("What is the largest planet in our solar system?", ("Jupiter",)), trivia)
    assert _teaches(neutral_probes.Fact("What is the largest ocean on Earth?", ("Pacific",)), ocean)
    assert not _teaches(neutral_probes.Fact("What is the capital of France?", ("Paris",)), _Text("Orly is in Paris."))
    paragraphs = [example.response for example in general_text()]
    assert len(paragraphs) >= 30 and all(example.prompt is None for example in general_text())
    corpus = " ".join(texts)
    for paragraph in paragraphs:  # not one sentence of the prose is in the corpus clients and replay draw from
        assert not any(sentence.strip() and sentence.strip() in corpus for sentence in paragraph.split(". "))


def _teach(model, tokenizer, examples: list[Example], steps: int = 120) -> None:
    """Full fine-tuning of the base itself, so a tiny random model knows some facts as a pretrained one would."""
    batch = collate([encode_example(tokenizer, e, 48) for e in examples], tokenizer.pad_token_id)
    weights = list(model.parameters())
    for weight in weights:
        weight.requires_grad_(True)
    optimiser = torch.optim.Adam(weights, lr=1e-2)
    model.train()
    for _ in range(steps):
        optimiser.zero_grad()
        model(**batch).loss.backward()
        optimiser.step()
    for weight in weights:
        weight.requires_grad_(False)  # frozen again, as a loaded base is


def _taught_base():
    """A tiny base taught four probe facts, with a fresh adapter; the facts and a config that can overwrite them."""
    base = load_base("tiny", quantisation="none")
    taught = [fact for fact in facts() if fact.question in ("What is the capital of France?",
                                                           "How many days are there in a week?",
                                                           "What colour is grass?", "What do bees make?")]
    _teach(base.model, base.tokenizer, [Example(fact.answers[0], fact.question) for fact in taught])
    config = RunConfig().replace(**{"local-steps": 40, "learning-rate": 0.05})
    return base, attach_adapter(base.model, config.adapter, seed=0), taught, config


def test_retention_is_the_share_of_the_facts_the_base_knew_that_the_adapted_model_still_answers(monkeypatch):
    base, model, taught, config = _taught_base()
    tokenizer = base.tokenizer
    known, guard = known_facts(model, tokenizer, "f" * 64, "taught")  # asked of the base alone, adapters disabled
    # the base answers what it was taught (and a few look-alikes: "seven" for the continents too), of all 138
    assert set(taught) <= set(known) and len(known) <= 10 and guard == []
    monkeypatch.setattr(neutral_probes, "answers", None)  # the second time comes from the cache: nothing asked
    assert known_facts(model, tokenizer, "f" * 64, "taught") == (known, guard)
    # past the measured facts, the next ones known guard a device's choice: never one that is measured
    monkeypatch.setattr(neutral_probes, "RETENTION_SIZE", 2)
    measured, guard = known_facts(model, tokenizer, "f" * 64, "taught")
    assert measured == known[:2] and guard == known[2:] and guard
    monkeypatch.undo()

    assert retention(model, tokenizer, known) == 1.0  # the initial adapter is the identity
    contradicting = [Example("Lyon", taught[0].question), Example("nine", taught[1].question)]
    train_adapter(model, tokenizer, contradicting * 4, config.training, seed=0)
    assert retention(model, tokenizer, known) <= 1 - 2 / len(known)  # personalising overwrote what the base knew
    assert retention(model, tokenizer, []) is None  # a base that knows none of the facts measures nothing


def test_a_client_that_forgot_guard_facts_moves_toward_the_base_until_it_knows_them_again(caplog):
    base, model, taught, config = _taught_base()
    tokenizer = base.tokenizer
    contradicting = [Example("Lyon", taught[0].question), Example("nine", taught[1].question)]
    train_adapter(model, tokenizer, contradicting * 4, config.training, seed=0)
    heldout = [Example("Lyon", taught[0].question)]
    full = evaluate_loss(model, tokenizer, heldout, 48, 4)
    # the measured facts are the other two: the rule sees only the guard, which the training contradicted
    runtime = ClientRuntime(base, model, schema=None, initial={}, corrections=None,
                            _known=(taught[2:], taught[:2]))
    assert retention(model, tokenizer, taught[:2]) < 1.0

    used, metrics = model_in_use(runtime, heldout, config.replace(**{"wise-keep-retention": 1.0}), full)
    assert metrics["wise-alpha"] < 1.0 and metrics["wise-guard-facts"] == 2
    assert metrics["wise-guard-retention"] == 1.0 == retention(model, tokenizer, taught[:2])  # the model in use
    assert used.loss > full.loss  # what it gave up: part of the personal gain
    # the base's held-out loss (alpha 0) is the same every round: kept after the first, as the base alone scores it
    with base_alone(model):
        assert EvalResult(**json.loads(base_loss_file(runtime, heldout, config.training).read_text())) \
            == evaluate_loss(model, tokenizer, heldout, config.training.max_seq_len, config.training.eval_batch_size)

    # a fixed alpha is no choice: one held-out pass, the model in use measured as every run measures its own
    passes = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(wise, "loss_on", lambda *args: passes.append(args) or evaluate_loss(
            model, tokenizer, heldout, config.training.max_seq_len, config.training.eval_batch_size))
        model_in_use(runtime, heldout, config.replace(**{"wise-alpha": 0.25}), full)
        assert len(passes) == 1
        model_in_use(runtime, heldout, config.replace(**{"wise-keep-gain": 0.9}), full)
        assert len(passes) >= 2  # the gain rule's: alpha 0 read from the file above, then the grid from 0.25

    runtime._known = (taught, [])  # a base that knows no guard facts cannot cap alpha: said, not hidden
    with caplog.at_level("WARNING"):
        _, metrics = model_in_use(runtime, heldout, config.replace(**{"wise-keep-retention": 1.0}), full)
    assert metrics.pop("wise-seconds") > 0 and "guard" in caplog.text
    assert metrics == {"wise-alpha": 1.0, "wise-guard-facts": 0}


def test_probe_results_are_measured_once_per_base_and_once_per_adapter(monkeypatch):
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none"})
    runtime = client_runtime(config)
    alone, initial = base_alone_losses(runtime, config.training), model_probes(runtime, config.training)
    assert initial.metrics["general-text-loss"] == pytest.approx(alone["general-text"])  # the initial adapter
    monkeypatch.setattr(probes_module, "loss_on", None)  # every client after the first reads the cache
    assert base_alone_losses(runtime, config.training) == alone
    assert model_probes(runtime, config.training) == initial  # another client holding the same global adapter
    monkeypatch.undo()
    state = adapter_state(runtime.model)
    load_adapter_state(runtime.model, {k: v.numpy() + 0.01 for k, v in state.items()}, partial=True)
    assert model_probes(runtime, config.training).metrics["general-text-loss"] != initial.metrics["general-text-loss"]


@pytest.mark.usefixtures("flower_task_identity")
def test_evaluate_every_skips_evaluation_but_not_the_last_round(tmp_path):
    simulate_in_this_process({"base-model": "tiny", "quantisation": "none", "local-steps": 2, "evaluate-every": 2},
                             2, 3, tmp_path, "run")
    rows = RunFolder(tmp_path / "run").rows()
    rounds = [r for r in rows if r["kind"] == "round"]
    assert [("eval_heldout_loss" in r, r["clients_evaluated"]) for r in rounds] == [(False, 0), (True, 2), (True, 2)]
    assert sorted({r["round"] for r in rows if r.get("phase") == "evaluate"}) == [2, 3]


@pytest.mark.usefixtures("flower_task_identity")
@pytest.mark.parametrize(("settings", "rounds", "probed"), [
    ({"forgetting-probes": False}, 1, [False]),
    ({"probe-every": 2}, 3, [False, True, True]),  # every 2nd round and the last; held-out data every round
])
def test_forgetting_probes_run_on_their_own_schedule_or_not_at_all(tmp_path, settings, rounds, probed):
    simulate_in_this_process({"base-model": "tiny", "quantisation": "none", "local-steps": 2, **settings},
                             2, rounds, tmp_path, "run")
    evaluated = [r for r in RunFolder(tmp_path / "run").rows() if r["kind"] == "round"]
    assert all("eval_heldout_loss" in r for r in evaluated)
    probe_keys = ("eval_general_text", "eval_retention", "eval_forgetting")
    assert [any(key.startswith(probe_keys) for key in r) for r in evaluated] == probed
