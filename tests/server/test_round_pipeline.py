"""The shape of a server round: from the round loop, each step is one call into its module, in pipeline order."""

from __future__ import annotations

import sys
from collections import defaultdict

import pytest
from inprocess_grid import InProcessGrid

import stamen.server.federation as federation
from stamen.server.strategy import AdapterStrategy
from stamen.shared.config import RunConfig
from stamen.simulations.client_app import simulated_client_app

pytestmark = pytest.mark.usefixtures("flower_task_identity")
ROUND_LOOP = {"stamen.server.federation", "stamen.server.federated_round"}


def _calls_from_the_round_loop(tmp_path, monkeypatch, overrides: dict) -> list[tuple[str, str]]:
    """Every (module, function) of the server that the round loop calls directly, in order, over one round."""
    calls: list[tuple[str, str]] = []

    def profile(frame, event, arg):
        caller = frame.f_back
        if event == "call" and caller is not None and caller.f_globals.get("__name__") in ROUND_LOOP:
            module = frame.f_globals.get("__name__", "")
            if module.startswith("stamen.server") and module not in ROUND_LOOP:
                calls.append((module, frame.f_code.co_name))

    run_rounds = federation._run_rounds

    def traced(*args, **kwargs):
        sys.setprofile(profile)
        try:
            return run_rounds(*args, **kwargs)
        finally:
            sys.setprofile(None)

    monkeypatch.setattr(federation, "_run_rounds", traced)
    config = RunConfig().replace(**{"base-model": "tiny", "quantisation": "none", "local-steps": 1,
                                    "num-server-rounds": 1, "run-dir": str(tmp_path), "run-id": "traced",
                                    "wire-dtype": "float32", **overrides})
    federation.run_federation(InProcessGrid(simulated_client_app([]), 3), config)
    return calls


@pytest.mark.parametrize("secure", [False, True], ids=["plain", "secure"])
def test_the_round_loop_enters_each_server_module_through_at_most_two_functions_in_pipeline_order(
        tmp_path, monkeypatch, secure):
    calls = _calls_from_the_round_loop(tmp_path, monkeypatch, {"secure-aggregation": secure})
    entered = defaultdict(set)
    for module, function in calls:
        entered[module].add(function)
    assert {module: len(functions) for module, functions in entered.items() if len(functions) > 2} == {}
    steps = [function for _, function in calls if function not in ("__init__", "offset")]
    admit = "admit_key_replies" if secure else "admit_updates"
    fold = "fold_sum" if secure else "fold_updates"
    train = ["configure_train", "send_and_collect", admit, *(["secure_sum"] if secure else []), fold, "write_train"]
    evaluate = ["configure_evaluate", "send_and_collect", *(
        ["admit_key_replies", "secure_sum", "write_secure_evaluation"] if secure else
        ["admit_evaluations", "write_evaluation"])]
    assert steps == [*train, *evaluate, "state_dict", "save_checkpoint"]


def test_flowers_own_aggregation_is_refused_since_the_round_loop_admits_and_folds():
    strategy = AdapterStrategy(None, (), "float16")
    with pytest.raises(NotImplementedError, match="federated_round"):
        strategy.aggregate_train(1, [])
    with pytest.raises(NotImplementedError, match="federated_round"):
        strategy.aggregate_evaluate(1, [])
