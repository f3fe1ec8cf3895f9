"""Shared fixtures: a hermetic cache and tiny Llama bases built from a config (seconds, no hub)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["FLWR_TELEMETRY_ENABLED"] = "0"


@pytest.fixture(scope="session", autouse=True)
def stamen_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every derived file of the test session goes to a fresh folder."""
    path = tmp_path_factory.mktemp("stamen-cache")
    os.environ["STAMEN_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_folder(stamen_cache: Path) -> Path:
    from stamen.shared.base_source import resolve_base_folder

    return resolve_base_folder("tiny")


@pytest.fixture(scope="session")
def other_tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second tiny base with different weights (another seed)."""
    from stamen.shared.tiny_model import build_tiny_base

    return build_tiny_base(tmp_path_factory.mktemp("other-tiny"), seed=1)
