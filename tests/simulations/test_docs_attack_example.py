"""The attack shown in docs/research.md works as written, and fits the 30-line budget."""

import re
from pathlib import Path

import numpy as np
import pytest

from stamen.simulations.attacks import ATTACKS, make_attack

DOC = Path(__file__).resolve().parents[2] / "docs" / "research.md"


@pytest.fixture(scope="module")
def documented_test():
    attack_source, test_source = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(attack_source.strip().splitlines()) <= 30
    exec(compile(attack_source, str(DOC), "exec"), {"__name__": "docs_attack"})
    yield test_source
    ATTACKS.pop("shrink-and-rotate")


def test_documented_attack_registers_and_its_test_pattern_passes(documented_test):
    assert "shrink-and-rotate" in ATTACKS
    namespace = {"make_attack": make_attack, "np": np}
    exec(compile(documented_test, str(DOC), "exec"), namespace)
    namespace["test_shrink_and_rotate_rolls_then_scales"]()
