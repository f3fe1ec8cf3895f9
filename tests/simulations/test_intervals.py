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
