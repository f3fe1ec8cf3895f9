"""Metric slots of a secure sum: bounds by kind, clipping that is said, means rounded to what the codec keeps."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from stamen.shared.secure_metrics import common_names, metric_bound, metric_means, metric_slots


def test_a_metric_beyond_its_bound_is_clipped_and_logged_and_means_come_back_from_the_slot_sums(caplog):
    with caplog.at_level(logging.WARNING):
        slots = metric_slots({"train-loss": 80.0, "train-tokens": 1200.0}, 0.5)
    assert slots["train-loss"] == 0.5  # clipped to the loss bound (50): weight * 50 / 50
    assert "['train-loss'] exceed their bounds" in caplog.text and "train-tokens" not in caplog.text
    second = metric_slots({"train-loss": 2.0, "train-tokens": 300.0}, 0.25)
    sums = np.array([slots["train-tokens"] + second["train-tokens"], slots["train-loss"] + second["train-loss"]])
    means = metric_means(sums, ["train-tokens", "train-loss"], 0.75, 0.0)
    assert means == pytest.approx({"train-tokens": (0.5 * 1200 + 0.25 * 300) / 0.75,
                                   "train-loss": (0.5 * 50 + 0.25 * 2) / 0.75})
    assert metric_means(sums, ["train-tokens", "train-loss"], 0.0, 0.0) == {}  # no weight: no mean


def test_means_keep_only_the_decimals_the_codec_error_leaves_and_only_common_names_are_summed():
    noisy = np.array([0.123456789 * 0.5 / metric_bound("heldout-loss")])
    assert metric_means(noisy, ["heldout-loss"], 0.5, 1e-4) == {"heldout-loss": 0.12}  # error 50 * 1e-4 / 0.5
    assert metric_bound("train-tokens") > metric_bound("train-steps") > metric_bound("heldout-loss")
    assert common_names([["train-loss", "replay-examples"], ["train-loss"]]) == ("train-loss",)
    assert common_names([]) == ()
