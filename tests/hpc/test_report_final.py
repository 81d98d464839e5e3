"""The report's reading of results.json's ``final`` section: typed, lenient, absent when not there."""

from __future__ import annotations

import numpy as np
import pytest

from hpc.report_final import Spread, fold_table, read_final, summary_rows

MEMBERS = [
    {"seed": 0, "fold": 1, "metrics": {"oa": 0.8, "miou": 0.5, "iou": [0.4, 0.6, None]}},
    {"seed": 1, "fold": 1, "metrics": {"oa": 0.9, "miou": 0.7, "iou": [0.6, 0.8, 0.7]}},
    {"seed": 0, "fold": 2, "metrics": {"oa": 0.7, "miou": 0.6, "iou": [0.5, 0.7, 0.6]}},
]


def test_absent_or_empty_final_is_none() -> None:
    assert read_final(None) is None
    assert read_final({"test": {}}) is None
    assert read_final({"final": {"members": []}}) is None
    assert read_final({"final": {"members": [{"seed": 0}]}}) is None  # no metrics: nothing to show


def test_final_is_read_with_spread_folds_and_ensemble() -> None:
    final = read_final({"final": {"members": MEMBERS, "ensemble": {"oa": 0.92, "miou": 0.75},
                                  "summary": {"miou": {"mean": 0.6, "std": 0.1, "ci95": [0.5, 0.7]},
                                              "oa": {"mean": "bad"}},
                                  "models": ["/m/a.pth", 3]}})
    assert final is not None and final.folded and [str(m) for m in final.models] == ["/m/a.pth"]
    assert final.spread("miou") == Spread(0.6, 0.1, (0.5, 0.7))
    oa = final.spread("oa")  # a summary entry that is not numbers: recomputed from the members
    assert oa is not None and oa.mean == pytest.approx(0.8) and oa.std == pytest.approx(0.1) and oa.ci95 is None
    pc = final.per_class("iou")
    assert pc is not None
    np.testing.assert_allclose(pc[0], [0.5, 0.7, 0.65])
    np.testing.assert_allclose(pc[1], [0.1, 0.1, np.std([0.7, 0.6], ddof=1)])
    rows = dict(summary_rows(final))
    assert rows["final runs"] == "3 member(s) over 2 fold(s)"
    assert rows["final test miou (mean ± std)"] == "0.6000 ± 0.1000 [95 % 0.5000, 0.7000]"
    assert rows["ensemble test miou"] == "0.7500"
    table = fold_table(final)
    assert "<td>1</td><td>2</td><td>0.8500</td><td>0.6000</td>" in table
    assert "<td>2</td><td>1</td><td>0.7000</td><td>0.6000</td>" in table


def test_no_fold_table_without_folds() -> None:
    final = read_final({"final": {"members": [{**m, "fold": None} for m in MEMBERS]}})
    assert final is not None and not final.folded and fold_table(final) == ""
    assert "fold" not in dict(summary_rows(final))["final runs"]
