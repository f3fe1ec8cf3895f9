"""`flwr run .` reads [tool.flwr.app.config]; it must stay a valid Stamen config equal to the defaults."""

import tomllib
from pathlib import Path

from stamen.shared.config import RunConfig

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_flower_app_config_matches_the_schema_defaults():
    flwr = tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]
    parsed = RunConfig.from_flat(flwr["config"])
    assert parsed == RunConfig()
    assert list(flwr["config"]) == list(RunConfig().to_flat())  # flwr run --run-config overrides listed keys only
    assert flwr["components"] == {
        "serverapp": "stamen.server.app:app",
        "clientapp": "stamen.simulations.client_app:app",
    }
