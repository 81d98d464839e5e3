"""Model inputs: day of year and the date encodings."""

from __future__ import annotations

import numpy as np

from dualseg.data.inputs import date_features, day_of_year


def test_day_of_year():
    dates = np.array(["2021-01-01", "2021-12-31", "2020-12-31", "2022-03-01"], dtype="datetime64[D]")
    days = (dates - np.datetime64("1970-01-01")).astype(int)
    assert day_of_year(days).tolist() == [1, 365, 366, 60]


def test_date_features_keep_order_across_new_year():
    def days(*iso):
        return (np.array(iso, dtype="datetime64[D]") - np.datetime64("1970-01-01")).astype(np.int64)

    times = {"s1": days("2018-09-25", "2019-01-02"), "s2": days("2018-09-20", "2018-12-31", "2019-11-01")}
    doy = date_features(times, "doy")
    assert doy["s2"].tolist() == [263, 365, 305]  # wraps
    d = date_features(times, "days")
    assert d["s2"].tolist() == [263, 365, 670] and d["s1"].tolist() == [268, 367]
