"""The rule shown in docs/aggregation-rules.md works as written, and fits the 30-line budget."""

import re
from pathlib import Path

import numpy as np
import pytest

from stamen.server.rules import RULES, ClientUpdate, make_rule

DOC = Path(__file__).resolve().parents[2] / "docs" / "aggregation-rules.md"


@pytest.fixture(scope="module")
def documented_rule():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    rule_source, test_source = blocks
    assert len(rule_source.strip().splitlines()) <= 30
    exec(compile(rule_source, str(DOC), "exec"), {"__name__": "docs_rule"})
    yield test_source
    RULES.pop("fedavg-decay")


def test_documented_rule_registers_and_decays(documented_rule):
    rule = make_rule("fedavg-decay", decay=0.5)
    for server_round, expected in ((1, 1.4), (2, 1.2)):
        rule.start_round(server_round, 1)
        rule.add(ClientUpdate("c", {"w": np.array([0.4])}, 1.0))
        assert rule.finish_round({"w": np.array([1.0])})["w"][0] == pytest.approx(expected)
    restored = make_rule("fedavg-decay")
    restored.load_state_dict(rule.state_dict())
    assert restored.round == 2


def test_documented_test_pattern_passes(documented_rule):
    namespace = {"make_rule": make_rule, "ClientUpdate": ClientUpdate, "np": np}
    exec(compile(documented_rule, str(DOC), "exec"), namespace)
    namespace["test_decay_halves_the_second_step"]()


def test_the_rules_table_lists_every_shipped_rule_with_its_default_options():
    table = DOC.read_text().split("| name | what the server does |", 1)[1].split("\n\n", 1)[0]
    documented = {}
    for cells in (line.split(" | ") for line in table.splitlines() if line.startswith("| `")):
        defaults = {} if cells[2] == "-" else {
            key: float(value) for key, value in (item.split("=") for item in cells[2].split(", "))}
        for name in re.findall(r"`([a-z-]+)`", cells[0]):
            documented[name] = defaults
    assert set(documented) == set(RULES) - {"fedavg-decay"}
    for name, defaults in documented.items():
        assert {k: float(v) for k, v in make_rule(name).options.items()} == defaults, name
