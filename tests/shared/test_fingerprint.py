import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from stamen.shared.fingerprint import BaseMismatchError, base_fingerprint, check_same_base


def test_fingerprint_is_stable_and_ignores_save_metadata(tiny_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    config = (
        (copy / "config.json")
        .read_text()
        .replace('"transformers_version"', '"_ignored_note": 1, "transformers_version"')
    )
    (copy / "config.json").write_text(config)
    assert base_fingerprint(tiny_folder) == base_fingerprint(copy)
    assert base_fingerprint(tiny_folder).startswith("sha256:")


def test_one_changed_weight_changes_the_fingerprint(tiny_folder, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(tiny_folder, copy)
    weights = load_file(copy / "model.safetensors")
    name = sorted(weights)[0]
    weights[name] = weights[name].clone()
    weights[name].view(-1)[0] += 1e-3
    save_file(weights, copy / "model.safetensors", metadata={"format": "pt"})
    assert base_fingerprint(copy) != base_fingerprint(tiny_folder)


def test_different_bases_differ_and_mismatch_is_a_clear_error(tiny_folder, other_tiny_folder):
    a, b = base_fingerprint(tiny_folder), base_fingerprint(other_tiny_folder)
    assert a != b
    check_same_base(a, a, "same")
    with pytest.raises(BaseMismatchError, match="base model mismatch"):
        check_same_base(a, b, "server vs client")


def test_fingerprint_reads_pytorch_bin_checkpoints(tiny_folder, tmp_path):
    copy = tmp_path / "bin"
    shutil.copytree(tiny_folder, copy)
    weights = load_file(copy / "model.safetensors")
    (copy / "model.safetensors").unlink()
    torch.save(weights, copy / "pytorch_model.bin")
    assert base_fingerprint(copy) == base_fingerprint(tiny_folder)
