"""A real Flower simulation (Ray backend) driven through the `stamen simulate` CLI."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from typer.testing import CliRunner

from stamen.shared.run_folder import RunFolder
from stamen.simulations.cli import app

TINY_RUN = (
    "base-model=tiny",
    "quantisation=none",
    "learning-rate=0.005",
    "lora-targets=q_proj,v_proj,o_proj,down_proj",
)


def _simulate(tmp_path, clients, rounds, *overrides):
    """`stamen simulate` on the tiny base; the CLI result, the run folder, its metric rows and its config.json."""
    args = ["simulate", "--clients", str(clients), "--rounds", str(rounds)]
    for override in (*TINY_RUN, *overrides, f"run-dir={tmp_path}"):
        args += ["--set", override]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (run_dir,) = tmp_path.iterdir()
    rows = RunFolder(run_dir).rows()
    return result, run_dir, rows, RunFolder(run_dir).record()


def test_two_round_federation_of_three_clients_lowers_heldout_loss(tmp_path):
    # nf4: every client evaluates (round-0 baseline) before it trains, the order that once stopped nf4 learning
    result, run_dir, rows, meta = _simulate(tmp_path, 3, 2, "quantisation=nf4", "tensorboard=true")
    assert meta["config"]["quantisation"] == "nf4"

    rounds = [r for r in rows if r["kind"] == "round"]
    assert [r["round"] for r in rounds] == [1, 2]
    assert rounds[-1]["eval_heldout_loss"] < rounds[0]["initial_heldout_loss"]
    assert rounds[-1]["eval_heldout_loss"] < rounds[0]["eval_heldout_loss"]

    uploads = [r for r in rows if r["kind"] == "client" and r["phase"] == "train"]
    assert len(uploads) == 6 and all(r["accepted"] for r in uploads)
    assert len({r["client"] for r in uploads}) == 3
    assert meta["adapter_wire_bytes"] == 2 * meta["adapter_values"]  # fp16
    n_tensors = 2 * 2 * 4  # layers x (A, B) x targets
    for r in uploads:  # measured from the ArrayRecord the client sent: adapter bytes + npy header/key per tensor
        assert 0 < r["bytes_up"] - meta["adapter_wire_bytes"] <= n_tensors * 200
    assert meta["adapter_wire_bytes"] < 0.05 * meta["base_stored_bytes"]

    assert (run_dir / "global_adapter.safetensors").is_file()
    assert RunFolder(run_dir).summary_record()["rounds"] == rounds
    assert "Federation rounds" in result.output

    report = (run_dir / "report.md").read_text()
    assert f"-> {rounds[-1]['eval_heldout_loss']:.4f}" in report
    training = sum(r["train_seconds"] for r in uploads)
    baseline = [r["baseline_seconds"] for r in uploads if r["round"] == 1]  # the round-0 evaluation is evaluating
    assert len(baseline) == 3 and all(seconds > 0 for seconds in baseline)
    assert all("baseline_seconds" not in r for r in uploads if r["round"] > 1)
    evaluating = sum(baseline) + sum(r["eval_seconds"] for r in rows
                                     if r["kind"] == "client" and r["phase"] == "evaluate")
    assert evaluating > 0 and (f"{training:,.1f} s training, {evaluating:,.1f} s evaluating (all clients, the "
                               f"round-0 baseline included; {evaluating / (training + evaluating):.0%} evaluating"
                               ) in report
    for plot in ("loss.png", "gains.png", "bytes.png"):
        assert f"]({plot})" in report and (run_dir / plot).read_bytes().startswith(b"\x89PNG")
    for written in ("report.md", "loss.png", "gains.png", "bytes.png"):
        (run_dir / written).unlink()
    rebuilt = CliRunner().invoke(app, ["report", str(run_dir)])  # `stamen report` rebuilds them from the metrics
    assert rebuilt.exit_code == 0, rebuilt.output
    assert (run_dir / "report.md").read_text() == report
    assert all((run_dir / plot).read_bytes().startswith(b"\x89PNG") for plot in ("loss.png", "gains.png", "bytes.png"))

    compared = CliRunner().invoke(app, ["compare", str(run_dir), "--out", str(tmp_path / "compare")])
    assert compared.exit_code == 0, compared.output
    table = json.loads((tmp_path / "compare" / "compare.json").read_text())
    assert table[0]["run"] == run_dir.name and table[0]["seeds"] == 1
    assert table[0]["heldout_end"] == {"mean": rounds[-1]["eval_heldout_loss"], "ci95": None, "n": 1}
    assert table[0]["mean_client_gain"]["mean"] > 0 and (tmp_path / "compare" / "compare.png").is_file()

    # the same numbers as TensorBoard event files, for `tensorboard --logdir runs`
    board = EventAccumulator(str(run_dir / "tensorboard"))
    board.Reload()
    held_out = [(event.step, event.value) for event in board.Scalars("round/eval_heldout_loss")]
    assert held_out == [(r["round"], pytest.approx(r["eval_heldout_loss"], rel=1e-5)) for r in rounds]
    client = uploads[0]
    losses = {event.step: event.value for event in board.Scalars(f"train/train_loss/{client['client']}")}
    assert losses[client["round"]] == pytest.approx(client["train_loss"], rel=1e-5)


def test_int8_updates_with_error_feedback_are_accepted_and_leave_their_residuals_on_the_device(tmp_path):
    _, run_dir, rows, meta = _simulate(tmp_path, 2, 2, "fraction-evaluate=0", "wire-dtype=int8", "quantisation=int8")
    uploads = [r for r in rows if r["kind"] == "client" and r["phase"] == "train"]
    assert len(uploads) == 4 and all(r["accepted"] for r in uploads)
    assert meta["adapter_values"] < meta["adapter_wire_bytes"] < 1.1 * meta["adapter_values"]  # 1 byte + block scales
    n_arrays = 2 * 2 * 4 * 2  # layers x (A, B) x targets x (codes, scales)
    for r in uploads:  # what was sent: the int8 payload plus an npy header and key per array
        assert 0 < r["bytes_up"] - meta["adapter_wire_bytes"] <= n_arrays * 256
    residuals = list((run_dir / "clients").rglob("wire-residual-r*.safetensors"))
    assert len(residuals) == 4  # each client keeps the last two rounds' residuals on the device
