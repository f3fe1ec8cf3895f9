"""Metrics are declared once (shared/metrics.py): a reply carrying one declared nowhere is refused at the source."""

import pytest

from stamen.shared.metrics import HELDOUT_LOSS, METRICS, undeclared
from stamen.shared.protocol import NUM_EXAMPLES, client_reply


def test_a_reply_with_a_metric_declared_nowhere_is_refused_naming_it():
    with pytest.raises(ValueError, match=r"\['heldout-los'\] are declared nowhere"):
        client_reply({NUM_EXAMPLES: 3, "heldout-los": 1.0}, "fingerprint", "client-0")
    reply = client_reply({NUM_EXAMPLES: 3, HELDOUT_LOSS.name: 1.0, HELDOUT_LOSS.initial_name: 2.0}, "f", "c")
    assert dict(reply["metrics"]) == {"num-examples": 3, "heldout-loss": 1.0, "initial-heldout-loss": 2.0}


def test_every_declaration_names_its_columns_from_its_wire_name_and_explains_itself():
    assert (HELDOUT_LOSS.column, HELDOUT_LOSS.eval_mean, HELDOUT_LOSS.train_mean, HELDOUT_LOSS.initial) == (
        "heldout_loss", "eval_heldout_loss", "train_heldout_loss", "initial_heldout_loss")
    for name, metric in METRICS.items():
        assert name == metric.name and name == name.lower() and "_" not in name and metric.help.strip()
    assert undeclared(["initial-general-text-loss", "retention", "initial-nothing"]) == ["initial-nothing"]
