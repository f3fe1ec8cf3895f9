"""Every mistake a newcomer makes with the `stamen` command, as a user meets it: one line that names the file, key,
flag or address and what to do, exit status 2, and nothing left behind (no run folder, work dir or device state)."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from stamen.shared.config import RunConfig
from stamen.shared.dev_certs import make_dev_certificates
from stamen.simulations.cli import main

JOIN = ("client", "join", "--server", "127.0.0.1:1", "--ca", "certs/ca.crt", "--key", "certs/nodes/device-1.key",
        "--data", "notes.jsonl", "--operator-key", "certs/operator.pub")  # each case fails before it would join


def _join(**changed: str) -> tuple[str, ...]:
    """The README's `client join`, one flag's value changed (``ca="x"`` sets ``--ca x``)."""
    args = list(JOIN)
    for flag, value in changed.items():
        args[args.index(f"--{flag.replace('_', '-')}") + 1] = value
    return tuple(args)


# (what the user did, the command, what its one line must say); {taken} is a port something already listens on
CASES = [
    ("no clients", ("simulate", "--clients", "0"), "Invalid value for '--clients': 0 is not in the range x>=1"),
    ("more clients than the data", ("simulate", "--clients", "10000"), "the embedded corpus supports at most"),
    ("a misspelt key", ("simulate", "--set", "lora-rnak=4"), "unknown configuration key 'lora-rnak' (did you mean "
                                                             "'lora-rank'?)"),
    ("a value out of range", ("simulate", "--set", "lora-rank=0"), "configuration key 'lora-rank' = 0 must be >= 1"),
    ("a value of the wrong type", ("simulate", "--set", "learning-rate=fast"), "'learning-rate' = 'fast' must be a "
                                                                               "float"),
    ("--set without a value", ("simulate", "--set", "lora-rank"), "override 'lora-rank' is not of the form key=value"),
    ("an unknown plug-in name", ("simulate", "--set", "attack=nothing"), "'attack' = 'nothing' is not an attack"),
    ("a flag that does not exist", ("simulate", "--no-such-flag"), "No such option '--no-such-flag'. (`stamen "
                                                                   "simulate --help`)"),
    ("a command that does not exist", ("no-such-command",), "No such command 'no-such-command'"),
    ("a preset that does not exist", ("simulate", "--preset", "missing.toml"), "'missing.toml' does not exist"),
    ("a preset that is not TOML", ("simulate", "--preset", "bad.toml"), "bad.toml is not valid TOML: Invalid value "
                                                                        "(at line 2, column 15)"),
    ("a preset with a misspelt key", ("simulate", "--preset", "misspelt.toml"), "unknown configuration key "
                                                                                "'lora-rnak' (did you mean"),
    ("a base that does not exist", ("simulate", "--set", "base-model=/nonexistent"), "base-model '/nonexistent' is "
                                                                                     "neither a transformers folder"),
    ("a dataset file that does not exist", ("simulate", "--set", "dataset=missing.jsonl"), "missing.jsonl does not "
                                                                                           "exist on this machine"),
    ("a dataset file that is not JSON lines", ("simulate", "--set", "dataset=bad.jsonl"), "bad.jsonl cannot be read "
                                                                                          "as jsonl"),
    ("resuming a folder that is not a run", ("simulate", "--resume", "."), "was not started by 'stamen simulate' "
                                                                           "(no simulation.json)"),
    ("resuming from a corrupt checkpoint", ("simulate", "--resume", "runs/broken"), "checkpoint.safetensors cannot "
                                                                                    "be read"),
    ("a certificate folder that does not exist", ("server", "start", "--certs", "missing"), "Invalid value for "
                                                                                            "'--certs'"),
    ("a certificate folder without certificates", ("server", "start", "--certs", "empty"), "--certs empty/ca.crt is "
                                                                                           "not a PEM certificate"),
    ("a server that registers no device", ("server", "start", "--certs", "no-devices"), "--certs no-devices has no "
                                                                                        "device keys (nodes/*.pub)"),
    ("a bad key on the server", ("server", "start", "--set", "lora-rank=0"), "'lora-rank' = 0 must be >= 1"),
    ("a server port already in use", ("server", "start", "--port", "{taken}"), "on 127.0.0.1 is not free"),
    ("a server resuming a folder that is not a run", ("server", "start", "--resume", "empty"), "empty is not a run "
                                                                                               "folder"),
    ("device data that does not exist", _join(data="missing.jsonl"), "Invalid value for '--data'"),
    ("device data that is not text", _join(data="binary"), "n.txt is not UTF-8 text"),
    ("device data that is empty", _join(data="empty.jsonl"), "empty.jsonl holds no examples"),
    ("device data with a broken line", _join(data="bad.jsonl"), "bad.jsonl:2 is not JSON"),
    ("a device key that does not exist", _join(key="missing.key"), "Invalid value for '--key'"),
    ("a public key given as the device key", _join(key="certs/nodes/device-1.pub"), "--key certs/nodes/device-1.pub "
                                                                                    "is not an unencrypted private "
                                                                                    "key"),
    ("a CA that is not a certificate", _join(ca="certs/operator.pub"), "--ca certs/operator.pub is not a PEM "
                                                                       "certificate"),
    ("an operator key that does not exist", _join(operator_key="missing.pub"), "Invalid value for '--operator-key'"),
    ("a server address without a port", _join(server="localhost"), "--server 'localhost' is not HOST:PORT"),
    ("exporting a folder that is not a run", ("export", "empty"), "empty is not a run folder"),
    ("exporting a round that was not saved", ("export", "runs/saved", "--round", "9"), "has no saved round 9. Saved "
                                                                                       "adapters: rounds 1"),
    ("exporting to an unknown format", ("export", "runs/saved", "--format", "onnx"), "unknown export format 'onnx'"),
    ("a report of a folder that is not a run", ("report", "empty"), "empty is not a run folder"),
    ("chatting with an adapter that does not exist", ("chat", "--adapter", "missing", "--prompt", "hi"), "no GGUF "
                                                                                                         "adapter at "
                                                                                                         "missing"),
    ("data for no devices", ("example-data", ".", "--devices", "0"), "Invalid value for '--devices'"),
    ("a sweep file that is not TOML", ("sweep", "bad.toml"), "bad.toml is not valid TOML"),
]


def make_mistakes_folder(folder: Path) -> None:
    """What the cases refer to: development certificates (with a device key and without), good and bad data, bad
    presets, a run with one saved round, a run whose checkpoint is corrupt, an empty folder."""
    make_dev_certificates(folder / "certs", [], ["device-1"])
    make_dev_certificates(folder / "no-devices", [], [])
    (folder / "notes.jsonl").write_text('{"prompt": "Hi?", "response": "Hello."}\n' * 8)
    (folder / "bad.jsonl").write_text('{"prompt": "Hi?", "response": "Hello."}\n{not json\n')
    (folder / "empty.jsonl").write_text("")
    (folder / "binary").mkdir()
    (folder / "binary" / "n.txt").write_bytes(b"\xff\xfe\x00\x81")
    (folder / "bad.toml").write_text("num-server-rounds = 2\nlocal-steps = = 3\n")
    (folder / "misspelt.toml").write_text("lora-rnak = 4\n")
    (folder / "empty").mkdir()
    for name in ("saved", "broken"):
        run = folder / "runs" / name
        (run / "rounds").mkdir(parents=True)
        save_file({"global/lora_A": np.zeros((2, 2), np.float32)}, run / "rounds" / "round-1.safetensors")
        (run / "config.json").write_text(json.dumps({"config": RunConfig().to_flat()}))
        (run / "simulation.json").write_text(json.dumps({"config": {"base-model": "tiny"}, "clients": 2,
                                                         "resources": {"cpus_per_client": 1, "gpus_per_client": 0}}))
    (folder / "runs" / "broken" / "checkpoint.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"trunc")


@pytest.fixture(scope="module")
def mistakes_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("mistakes")
    make_mistakes_folder(folder)
    return folder


def _files(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def stamen_says(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, args: tuple[str, ...]
                ) -> tuple[int, str]:
    """Run the ``stamen`` entry point as a shell would; its exit status and everything it printed."""
    for variable in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):  # the commands set them for their processes
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr("sys.argv", ["stamen", *args])
    with pytest.raises(SystemExit) as ended:
        main()
    captured = capsys.readouterr()
    return ended.value.code, (captured.out + captured.err).strip()


@pytest.mark.parametrize("mistake, args, named", CASES, ids=[case[0] for case in CASES])
def test_a_mistake_is_one_line_naming_what_to_fix_with_status_2_and_nothing_left_behind(
        mistake, args, named, mistakes_folder, monkeypatch, capsys):
    monkeypatch.chdir(mistakes_folder)
    monkeypatch.setenv("COLUMNS", "400")
    before = _files(mistakes_folder)
    with socket.create_server(("127.0.0.1", 0)) as taken:
        code, said = stamen_says(monkeypatch, capsys, tuple(a.format(taken=taken.getsockname()[1]) for a in args))
    assert code == 2, said
    assert said.startswith("error: ") and len(said.splitlines()) == 1, said
    assert named in said, said
    assert "Traceback" not in said
    assert _files(mistakes_folder) == before  # no run folder, work dir, device state or log


def test_the_table_has_at_least_25_mistakes_of_every_kind_a_newcomer_meets():
    commands = {args[0] if args[0] != "client" else "client join" for _, args, _ in CASES}
    assert len(CASES) >= 25 and len({case[0] for case in CASES}) == len(CASES)
    assert {"simulate", "server", "client join", "export", "report", "chat", "example-data", "sweep"} <= commands

