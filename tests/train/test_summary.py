"""Spread over members: mean, sample std and a seeded bootstrap interval on known numbers."""

from __future__ import annotations

import math

import pytest

from dualseg.train.summary import per_class, spread


def test_mean_std_and_interval_of_known_numbers() -> None:
    s = spread([1.0, 2.0, 3.0])
    assert s.mean == 2.0 and s.std == 1.0 and s.n == 3  # sample std (ddof=1)
    assert 1.0 <= s.low < 2.0 < s.high <= 3.0
    assert spread([1.0, 2.0, 3.0]) == s  # seeded: the same members give the same interval
    wide, narrow = spread([0.0, 1.0]), spread([0.49, 0.51])
    assert wide.high - wide.low > narrow.high - narrow.low
    assert math.isclose(narrow.mean, 0.5) and narrow.low >= 0.49 and narrow.high <= 0.51


def test_one_member_has_no_std_and_a_point_interval() -> None:
    s = spread([0.7])
    assert (s.mean, s.std, s.low, s.high, s.n) == (0.7, None, 0.7, 0.7, 1)


def test_bad_values_are_refused() -> None:
    with pytest.raises(ValueError, match="no values"):
        spread([])
    with pytest.raises(ValueError, match="non-finite"):
        spread([1.0, float("nan")])


def test_per_class_skips_classes_absent_from_a_member() -> None:
    rows = [[0.5, None, 0.2], [0.7, None, float("nan")]]
    out = per_class(rows)
    assert out[0] is not None and math.isclose(out[0].mean, 0.6) and out[0].n == 2
    assert out[1] is None
    assert out[2] is not None and out[2].n == 1 and out[2].mean == 0.2
