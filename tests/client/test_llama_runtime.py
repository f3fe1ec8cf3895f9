"""The personalised model in llama.cpp, the runtime edge apps use: the embedded base's GGUF plus the GGUF adapter
Stamen exports moves the next-token distribution the way PEFT does, and answers what the device taught it."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from stamen.client.edge import PersonalModel
from stamen.client.llama_runtime import LlamaModel, LlamaRuntimeError
from stamen.shared.adapters import base_alone
from stamen.shared.config import AdapterSpec
from stamen.shared.corpus import load_topics
from stamen.shared.examples import IGNORE_INDEX, Example, encode_example
from stamen.simulations.cli import app

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide.md"
FACTS = [  # what only this device knows, in a few phrasings
    Example(prompt="What is my cat called?", response="Your cat is called Miso."),
    Example(prompt="What's the name of my cat?", response="Your cat is called Miso."),
    Example(prompt="Tell me my cat's name.", response="Your cat is called Miso."),
    Example(prompt="Do you remember what my cat is called?", response="Yes, your cat is called Miso."),
]


@pytest.fixture(scope="module")
def personalised(tmp_path_factory):
    """A device's adapter (q, k and v: k's rows are permuted for llama.cpp too) trained on one topic of the
    embedded corpus and its own facts, exported as GGUF; the topic's other examples are held out."""
    topic = load_topics()["emotion"]
    train, heldout = list(topic[:32]) + FACTS * 3, list(topic[32:44])
    model = PersonalModel.load("smollm2-135m", quantisation="none",
                               spec=AdapterSpec(targets=("q_proj", "k_proj", "v_proj")))
    # self-replay without WiSE: the adapter as trained is what the export must carry, whatever the default
    model.personalise(train, steps=24, learning_rate=3e-3, seed=0, forgetting_protection="self-replay")
    folder = model.export(tmp_path_factory.mktemp("export"), format="gguf").parent
    return model, folder, heldout


@torch.no_grad()
def _peft_top1(model: PersonalModel, ids: list[int]) -> np.ndarray:
    model.model.eval()
    return model.model(input_ids=torch.tensor([ids])).logits[0].argmax(-1).numpy()


def test_llama_cpp_with_the_exported_adapter_agrees_with_peft_and_lowers_held_out_loss(personalised):
    model, folder, heldout = personalised
    encoded = [encode_example(model.base.tokenizer, example, model.max_seq_len) for example in heldout]
    with base_alone(model.model):
        peft_without = model.score(heldout)
    peft_with = model.score(heldout)
    llama_without = LlamaModel.load(scores=True).loss(encoded)
    personal = LlamaModel.load(adapter=folder, scores=True)
    llama_with = personal.loss(encoded)
    figures = (f"held-out loss PEFT {peft_without:.3f} -> {peft_with:.3f}, "
               f"llama.cpp {llama_without:.3f} -> {llama_with:.3f}")
    assert peft_with < peft_without - 0.1 and llama_with < llama_without - 0.1, figures
    assert abs(llama_with - peft_with) < 0.1 * peft_with, figures  # Q4_1 arithmetic, the same model

    # the next token at every response position of the held-out examples: the adapter must not add disagreement
    # beyond what the Q4_1 base already has with PEFT's fp32 (near-ties flip with the CPU's kernels)
    with base_alone(model.model):
        base_agreement = _top1_agreement(model, LlamaModel.load(scores=True), encoded)
    agreement = _top1_agreement(model, personal, encoded)
    print(f"{figures}; top-1 agreement {agreement:.1%} (the bases alone: {base_agreement:.1%})")
    assert agreement >= 0.9 and agreement >= base_agreement - 0.03, \
        f"top-1 agreement {agreement:.1%}, the bases alone {base_agreement:.1%}; {figures}"


def _top1_agreement(model: PersonalModel, llama: LlamaModel, encoded) -> float:
    agreeing = total = 0
    for example in encoded:
        scored = np.array(example.labels[1:]) != IGNORE_INDEX
        llama_top1 = llama.logits(example.input_ids)[:-1].argmax(-1)
        agreeing += int((llama_top1 == _peft_top1(model, example.input_ids)[:-1])[scored].sum())
        total += int(scored.sum())
    return agreeing / total


def test_stamen_chat_answers_what_the_device_taught_its_adapter(personalised):
    _, folder, _ = personalised
    # a chat on stdin (an empty line leaves), then one --prompt to the base alone, which never heard of the cat
    personal = CliRunner().invoke(app, ["chat", "--adapter", str(folder), "--max-tokens", "16"],
                                  input="Hello!\nWhat is my cat called?\n\n")
    assert personal.exit_code == 0, personal.output
    first, second = personal.output.split("you> ")[1:3]
    assert "Miso" in second and first.strip()
    base = CliRunner().invoke(app, ["chat", "--prompt", "What is my cat called?", "--max-tokens", "16"])
    assert base.exit_code == 0 and base.output.strip() and "Miso" not in base.output


def test_stamen_chat_names_an_adapter_it_cannot_find_or_read(tmp_path):
    result = CliRunner().invoke(app, ["chat", "--adapter", str(tmp_path / "nowhere.gguf"), "--prompt", "hi"])
    assert isinstance(result.exception, LlamaRuntimeError)  # `stamen` prints it as one line, exit code 2
    assert f"no GGUF adapter at {tmp_path / 'nowhere.gguf'}" in str(result.exception)
    (tmp_path / "broken.gguf").write_bytes(b"not a GGUF file")
    with pytest.raises(LlamaRuntimeError, match=r"llama\.cpp could not load base smollm2-135m with adapter .*broken"):
        LlamaModel.load(adapter=tmp_path / "broken.gguf")


def test_the_guide_runs_the_personalised_model_in_llama_cpp(personalised, tmp_path, monkeypatch, capsys):
    snippet = re.search(r"## Run it on the device\n.*?```python\n(.*?)```", GUIDE.read_text(), re.S).group(1)
    model, _, _ = personalised
    monkeypatch.chdir(tmp_path)
    model.export("my-adapter")  # as the README's app snippet leaves it
    exec(compile(snippet, "docs/guide.md", "exec"), {})
    assert (tmp_path / "my-adapter-gguf" / "adapter.gguf").is_file()
    assert "Miso" in capsys.readouterr().out
