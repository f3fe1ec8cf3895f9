"""The edge-client API: the README's snippet, run as written (on the tiny base in every quantisation, and on the
embedded base, where it must visibly teach a fact), and its parts."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch

from stamen.client import PersonalModel
from stamen.client.device.resource_guard import PACE_FILE, ResourceGuards, RoundDeclined, record_pace
from stamen.client.replay.self_replay import SEED_PROMPTS
from stamen.client.state_store import PERSONAL, ClientStateStore
from stamen.shared.adapters import adapter_state
from stamen.shared.config import ConfigError, TrainingSpec
from stamen.shared.device_data import DeviceDataError, read_examples
from stamen.shared.forgetting_protection import DEFAULT, PROTECTIONS

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_snippet() -> str:
    text = README.read_text()
    return re.search(r"In an app, without the CLI:\n\n```python\n(.*?)```", text, re.S).group(1)


@pytest.mark.parametrize("quantisation", ["auto", "nf4", "int8", "none"])
def test_the_readme_snippet_personalises_and_exports(quantisation, tmp_path, monkeypatch, tiny_folder, avx512bf16_cpu):
    snippet = _readme_snippet()
    assert len(snippet.strip().splitlines()) <= 15
    monkeypatch.chdir(tmp_path)
    load = 'PersonalModel.load("smollm2-135m")'
    assert load in snippet
    # the tiny base (no GGUF here), in each quantisation mode, on a CPU path where evaluation repacks 4-bit weights
    exec(
        compile(snippet.replace(load, f'PersonalModel.load("tiny", quantisation="{quantisation}")'), "README", "exec"),
        {},
    )
    assert (tmp_path / "my-adapter" / "adapter_config.json").is_file()


def test_the_readme_snippet_teaches_the_embedded_base_a_fact_it_did_not_know(tmp_path, monkeypatch):
    """The snippet on the embedded base, in fp32 (``auto`` picks int8 on some CPUs, where the same steps take about
    four times as long): its first answer does not name the cat, its second, after personalising, does."""
    snippet = _readme_snippet()
    load = 'PersonalModel.load("smollm2-135m")'
    monkeypatch.chdir(tmp_path)
    said: list[str] = []
    exec(compile(snippet.replace(load, 'PersonalModel.load("smollm2-135m", quantisation="none")'), "README", "exec"),
         {"print": said.append})
    before, after = said
    assert "Miso" not in before and "Miso" in after, said


def test_an_exported_adapter_and_a_devices_personal_part_load_back(tmp_path, tiny_folder):
    model = PersonalModel.load("tiny", quantisation="none")
    model.personalise(["a line of the device's own text", "another one"], steps=3, learning_rate=0.05)
    trained = adapter_state(model.model)
    again = PersonalModel.load("tiny", adapter=model.export(tmp_path / "adapter"), quantisation="none")
    for name, value in adapter_state(again.model).items():
        assert torch.equal(value, trained[name])
    personal_name = next(name for name in trained if "lora_B" in name)
    ClientStateStore(tmp_path / "state").save(PERSONAL, 4, {personal_name: np.full(trained[personal_name].shape, 0.5,
                                                                                     dtype=np.float32)})
    overlaid = PersonalModel.load("tiny", adapter=tmp_path / "adapter", personal_state=tmp_path / "state",
                                  quantisation="none")
    assert torch.all(adapter_state(overlaid.model)[personal_name] == 0.5)


def test_device_data_formats_and_their_errors(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes/a.txt").write_text("first paragraph\n\nsecond paragraph\n")
    assert [e.response for e in read_examples(tmp_path / "notes")] == ["first paragraph", "second paragraph"]
    (tmp_path / "rows.csv").write_text('prompt,response\nhi,hello there\nbye,"see you\nsoon"\n')
    assert [(e.prompt, e.response) for e in read_examples(tmp_path / "rows.csv")] == [
        ("hi", "hello there"), ("bye", "see you\nsoon")]  # a quoted field keeps its newline
    (tmp_path / "bad.jsonl").write_text('{"text": "fine"}\n{"prompt": "no answer"}\n')
    with pytest.raises(DeviceDataError, match=r"bad.jsonl:2"):
        read_examples(tmp_path / "bad.jsonl")
    with pytest.raises(DeviceDataError, match="expected a folder"):
        read_examples(tmp_path / "rows.parquet")
    (tmp_path / "latin.jsonl").write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(DeviceDataError, match=r"latin.jsonl:2 is not UTF-8 text \(byte 13 of the line"):
        read_examples(tmp_path / "latin.jsonl")


def test_a_large_data_file_is_read_line_by_line_and_named_in_a_warning(tmp_path, monkeypatch, caplog):
    from stamen.shared import device_data

    rows = "".join(f'{{"prompt": "q{n}", "response": "a{n}"}}\n' for n in range(2000))
    (tmp_path / "big.jsonl").write_text(rows)
    monkeypatch.setattr(device_data, "LARGE_FILE_BYTES", len(rows) - 1)
    opened = []
    monkeypatch.setattr(device_data.Path, "read_text", lambda self, *a, **k: opened.append(self))  # not read whole
    examples = read_examples(tmp_path / "big.jsonl")
    assert [e.prompt for e in examples[:2]] == ["q0", "q1"] and len(examples) == 2000 and not opened
    assert any("big.jsonl holds 0 MB: the device keeps all its examples in memory" in r.getMessage()
               for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(device_data, "LARGE_FILE_BYTES", len(rows))
    read_examples(tmp_path / "big.jsonl")
    assert not caplog.records


def test_a_device_declines_rounds_beyond_its_limits(tmp_path):
    training = TrainingSpec(local_steps=12)
    with pytest.raises(RoundDeclined, match="asks 12 local steps, this device allows 5"):
        ResourceGuards(max_local_steps=5).check(training, tmp_path)
    with pytest.raises(RoundDeclined, match="MB"):
        ResourceGuards(max_memory_mb=1).check(training, tmp_path)
    ResourceGuards(max_round_seconds=10).check(training, tmp_path)  # no pace measured yet: accepted
    record_pace(tmp_path, seconds=6.0, steps=3)
    assert (tmp_path / PACE_FILE).is_file()
    with pytest.raises(RoundDeclined, match="about 24 s"):
        ResourceGuards(max_round_seconds=10).check(training, tmp_path)


def test_personalising_again_replays_what_earlier_calls_taught_unless_switched_off(tiny_folder):
    """A device personalises on its cat, then on its commute: with the examples of earlier calls replayed, they fill
    a quarter of the second call's batches, so the model still expects them; with forgetting protection off
    (``forgetting_protection="none"``, the federation's switch) the second call erases them."""
    cat = [{"prompt": f"What is my cat called? ({n})", "response": "Miso, a grey cat."} for n in range(8)]
    commute = [{"prompt": f"How do I get to work? ({n})", "response": "By the early train."} for n in range(8)]
    after = {}
    for protection in ("buffer", "none"):
        model = PersonalModel.load("tiny", quantisation="none")
        model.personalise(cat, steps=10, learning_rate=2e-2, forgetting_protection=protection)
        taught = model.score(cat)
        model.personalise(commute, steps=10, learning_rate=2e-2, forgetting_protection=protection)
        after[protection] = model.score(cat) - taught  # how much of what the first call taught was lost
        assert [e.response for e in model.replay_buffer.items] == [e["response"] for e in cat + commute]
    assert after["buffer"] < after["none"] - 0.05, after


def test_an_apps_default_protection_is_the_federations_and_each_named_one_does_what_it_names(tiny_folder,
                                                                                               monkeypatch):
    """``"default"`` replays what the federation's default replays (the base's own answers), ``"wise-25"`` uses a
    quarter of the adapter, and a protection that needs a server is refused by name."""
    from stamen.client import edge

    seen = []
    real = edge.train_adapter

    def recording(*args, **kwargs):
        seen.append((kwargs["replay"], kwargs["replay_ratio"], kwargs["distillation"]))
        return real(*args, **kwargs)

    monkeypatch.setattr(edge, "train_adapter", recording)
    model = PersonalModel.load("tiny", quantisation="none")
    lines = ["a line of the device's own text", "another one"]
    model.personalise(lines, steps=2, learning_rate=0.05)
    replayed, ratio, distillation = seen[-1]
    assert len(replayed) == 16 and ratio == 0.25 and distillation is None  # replay-self-size of the base's answers
    assert {example.prompt for example in replayed} <= set(SEED_PROMPTS)
    model.personalise(lines, steps=2, learning_rate=0.05, forgetting_protection="self-distill")
    assert seen[-1][2] is not None
    model.personalise(lines, steps=2, learning_rate=0.05, forgetting_protection="wise-25")
    assert seen[-1][0] == [] and model.alpha == 0.25
    model.personalise(lines, steps=2, learning_rate=0.05, forgetting_protection="none")
    assert seen[-1][:2] == ([], 0.0) and model.alpha == 1.0
    with pytest.raises(ConfigError, match="'forgetting-protection' = 'anchor' must be one of"):
        model.personalise(lines, steps=2, forgetting_protection="anchor")


def test_personalising_with_heldout_examples_moves_the_model_toward_the_base_keeping_the_asked_gain(tiny_folder):
    examples = [{"prompt": f"What is my cat called? ({n})", "response": "Miso."} for n in range(8)]
    model = PersonalModel.load("tiny", quantisation="none")
    base = model.score(examples)
    model.personalise(examples, steps=8, learning_rate=1e-2, heldout=examples, keep_gain=0.5)
    assert model.alpha in (0.25, 0.5, 0.75)
    assert base - model.score(examples) >= 0.5 * (base - _trained_loss(model, examples)) - 1e-6
    model.personalise(examples, steps=2, learning_rate=1e-2, heldout=examples, keep_gain=None)
    assert model.alpha == PROTECTIONS[DEFAULT]["wise-alpha"]  # no choice on the device: the protection's own alpha
    model.personalise(examples, steps=2, learning_rate=1e-2, heldout=examples, keep_gain=None,
                      forgetting_protection="none")
    assert model.alpha == 1.0  # no protection, no choice: the adapter as trained


def test_a_retention_bound_moves_the_personal_model_back_to_the_base_when_it_forgets_the_guard(
        tiny_folder, monkeypatch, caplog):
    from stamen.client import edge
    from stamen.client.evaluation.neutral_probes import facts

    examples = [{"prompt": f"What is my cat called? ({n})", "response": "Miso."} for n in range(8)]
    model = PersonalModel.load("tiny", quantisation="none")
    base = model.score(examples)
    # the guard: a fact this base is said to know, which no adapted tiny model answers
    monkeypatch.setattr(edge, "known_facts", lambda *args: ([], [facts()[0]]))
    model.personalise(examples, steps=8, learning_rate=1e-2, heldout=examples, keep_gain=0.5, keep_retention=1.0)
    assert model.alpha == 0.0 and model.score(examples) == pytest.approx(base, abs=1e-6)  # the base itself
    monkeypatch.setattr(edge, "known_facts", lambda *args: ([], []))  # nothing to guard: said, alpha stands
    with caplog.at_level("WARNING"):
        model.personalise(examples, steps=2, learning_rate=1e-2, heldout=examples, keep_gain=0.5,
                          keep_retention=1.0)
    assert model.alpha in (0.25, 0.5, 0.75) and "guard" in caplog.text


def _trained_loss(model: PersonalModel, examples: list) -> float:
    alpha = model.alpha
    model.interpolate(1.0)
    loss = model.score(examples)
    model.interpolate(alpha)
    return loss
