"""Config keys are declared once, with what each does: `stamen keys`, docs/configuration.md and the Flower app
config all come from the declaration."""

import tomllib
from pathlib import Path

from typer.testing import CliRunner

from stamen.shared.config import RunConfig
from stamen.shared.config_keys import documented_keys, keys_markdown, keys_toml
from stamen.simulations.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_every_key_says_what_it_does_and_belongs_to_one_group():
    docs = documented_keys()
    assert [doc.key for doc in docs] == list(RunConfig().to_flat())
    assert all(len(doc.help) > 12 and not doc.help.startswith(("...", "and ", "or ")) for doc in docs), [
        doc.key for doc in docs if len(doc.help) <= 12]
    groups = {doc.group: doc.simulation_only for doc in docs}
    assert {group for group, only in groups.items() if only} == {"data", "attack"}
    assert {"run", "adapter", "training", "privacy", "replay", "personal"} <= set(groups)


def test_the_flower_app_config_and_the_key_reference_are_written_from_the_declaration():
    """`flwr run .` reads [tool.flwr.app.config]: it is the declaration's defaults, in its order (flwr run
    --run-config overrides listed keys only); docs/configuration.md is `stamen keys --markdown`."""
    text = (ROOT / "pyproject.toml").read_text()
    start = text.index("[tool.flwr.app.config]")
    assert text[start:text.index("\n\n", start)] == keys_toml()
    flwr = tomllib.loads(text)["tool"]["flwr"]["app"]
    assert RunConfig.from_flat(flwr["config"]) == RunConfig()
    assert flwr["components"] == {"serverapp": "stamen.server.app:app",
                                  "clientapp": "stamen.simulations.client_app:app"}
    assert (ROOT / "docs" / "configuration.md").read_text() == keys_markdown() + "\n"


def test_stamen_keys_lists_every_key_with_its_default():
    result = CliRunner().invoke(app, ["keys", "--toml"])
    assert result.exit_code == 0 and result.stdout.strip() == keys_toml()
    listed = CliRunner().invoke(app, ["keys"], env={"COLUMNS": "300"})
    assert listed.exit_code == 0
    assert all(doc.key in listed.stdout for doc in documented_keys())
