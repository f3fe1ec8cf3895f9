"""Means over seeds with Student-t 95% intervals, paired differences, and when a difference is significant."""

import pytest

from stamen.simulations.intervals import Interval, difference_text, paired


def test_an_interval_is_the_mean_plus_minus_the_student_t_half_width():
    interval = Interval.of([1.0, 2.0, 3.0])
    assert interval.mean == 2.0 and interval.n == 3
    assert interval.half_width == pytest.approx(4.302653 * 1.0 / 3**0.5)  # t(0.975, 2) * sd / sqrt(n)
    assert interval.text(2) == "2.00 ± 2.48"
    assert (interval.low, interval.high) == pytest.approx((-0.484, 4.484), abs=1e-3)
    one = Interval.of([5.0])
    assert one.half_width is None and one.text(1) == "5.0" and not one.significant()
    with pytest.raises(ValueError, match="at least one value"):
        Interval.of([])


def test_a_paired_difference_is_significant_only_when_its_interval_excludes_zero():
    steady = paired([2.0, 3.0, 4.0], [1.0, 2.1, 2.9])  # always about 1 higher: the pairing removes the spread
    assert steady.mean == pytest.approx(1.0) and steady.significant()
    assert difference_text(steady, 2) == "+1.00 ± 0.25"
    noisy = paired([2.0, 1.0, 3.0], [1.0, 2.0, 2.5])
    assert not noisy.significant() and difference_text(noisy, 2).endswith("(n.s.)")
    lower = paired([1.0, 2.0, 3.0], [2.0, 3.1, 3.9])
    assert lower.significant() and difference_text(lower, 1).startswith("-1.0 ± ")
    with pytest.raises(ValueError, match="one baseline value per seed"):
        paired([1.0, 2.0], [1.0])


def test_an_interval_over_seeds_and_facts_widens_with_the_facts_even_where_the_seeds_agree():
    """Issue: per-fact outcomes were not stored, so intervals covered seeds only: three seeds that agree on 10 facts
    looked certain. Resampling the facts too gives their spread its due."""
    import numpy as np

    from stamen.simulations.intervals import fact_matrix, over_seeds_and_items

    rng = np.random.default_rng(0)
    facts = rng.random(10) < 0.6  # which of 10 facts a model still answers: the same in every seed
    agreeing = np.tile(facts.astype(float), (3, 1))
    interval = over_seeds_and_items(lambda s, f: float(agreeing[np.ix_(s, f)].mean()), *agreeing.shape)
    assert interval.mean == pytest.approx(facts.mean()) and interval.half_width > 0.15  # 10 facts: about +-0.3
    assert Interval.of(list(agreeing.mean(axis=1))).half_width == pytest.approx(0.0)  # over seeds alone: none
    many = np.tile((rng.random(1000) < 0.6).astype(float), (3, 1))
    wide, narrow = interval.half_width, over_seeds_and_items(lambda s, f: float(many[np.ix_(s, f)].mean()),
                                                             *many.shape).half_width
    assert narrow < wide / 5  # 100 times the facts: about a tenth of the width
    names, matrix = fact_matrix([{"a": 1.0, "b": 0.0, "c": 1.0}, {"b": 0.5, "c": 1.0}])
    assert names == ["b", "c"] and matrix.tolist() == [[0.0, 1.0], [0.5, 1.0]]  # the facts every seed measured
