"""`stamen certs`: development keys where the operator asked for them, and nowhere else."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from stamen.shared.dev_certs import NodeNameError, make_dev_certificates
from stamen.simulations.cli import app


@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", ".hidden", "", "x" * 65, "a..b", "-flag"])
def test_a_device_name_that_is_not_a_plain_file_name_is_refused_before_anything_is_written(tmp_path, name):
    """Issue: `stamen certs certs --node ../../escaped` wrote a key outside certs/."""
    with pytest.raises(NodeNameError, match=r"device name .* must be 1-64 letters, digits"):
        make_dev_certificates(tmp_path / "certs", [], ["device-1", name])
    assert not list(tmp_path.rglob("*")), "nothing is written, the valid device-1 included"


def test_the_certs_command_refuses_a_bad_device_name_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["certs", "out", "--node", "../../escaped"])
    assert result.exit_code != 0 and isinstance(result.exception, NodeNameError)
    assert not list(tmp_path.rglob("*")) and not (tmp_path.parent / "escaped.key").exists()
    made = make_dev_certificates(tmp_path / "certs", [], ["phone.alice_2"])
    assert made.node_key("phone.alice_2").is_file() and made.node_public_key("phone.alice_2").is_file()
