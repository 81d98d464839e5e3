"""The report's reading of results.json's ``final`` section: what :mod:`hpc.results` writes, typed and lenient."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

import numpy as np
import pytest

from dualseg.train.summary import spread
from hpc.report_final import Spread, fold_table, read_final, summary_rows
from hpc.results import FinalSection, MemberResult, Summary, finite

TESTS = [{"oa": 0.8, "miou": 0.5, "iou": [0.4, 0.6, None]}, {"oa": 0.9, "miou": 0.7, "iou": [0.6, 0.8, 0.7]},
         {"oa": 0.7, "miou": 0.6, "iou": [0.5, 0.7, 0.6]}]


def _members(folds: list[str | None]) -> list[MemberResult]:
    return [MemberResult(i, 10 + i, 3, 0, seed, fold, f"/s/final/trial_{10 + i}/best.pt", test)
            for i, (seed, fold, test) in enumerate(zip([0, 1, 0], folds, TESTS, strict=True))]


def _results(section: FinalSection) -> dict[str, Any]:
    """results.json as the evaluation job writes it (hpc.results.write_results: strict JSON)."""
    return json.loads(json.dumps(finite({"final": asdict(section)}), default=str))


def _summary(members: list[MemberResult], ensemble: dict[str, Any] | None) -> Summary:
    return Summary([m.member for m in members], {"miou": spread([m.test["miou"] for m in members])}, [], [], ensemble)


def test_absent_or_empty_final_is_none() -> None:
    assert read_final(None) is None
    assert read_final({"test": {}}) is None
    assert read_final({"final": {"members": []}}) is None
    assert read_final({"final": {"study": "s/final", "error": "no COMPLETE member"}}) is None


def test_final_is_read_with_spread_folds_and_ensemble() -> None:
    members = _members(["1", "1", "2"])
    folds = {f: _summary([m for m in members if m.fold == f], {"oa": 0.9, "miou": 0.7}) for f in ("1", "2")}
    section = FinalSection("s/final", 3, 3, ["a", "b", "c"], members, _summary(members, None), folds)
    final = read_final(_results(section))
    assert final is not None and final.folded
    assert final.models == []  # no ensemble panels across folds
    s = spread([0.5, 0.7, 0.6])
    assert final.spread("miou") == Spread(s.mean, s.std or 0.0, (s.low, s.high))
    oa = final.spread("oa")  # not in the summary: from the members
    assert oa is not None and oa.mean == pytest.approx(0.8) and oa.std == pytest.approx(0.1) and oa.ci95 is None
    pc = final.per_class("iou")
    assert pc is not None
    np.testing.assert_allclose(pc[0], [0.5, 0.7, 0.65])
    np.testing.assert_allclose(pc[1], [0.1, 0.1, np.std([0.7, 0.6], ddof=1)])
    rows = dict(summary_rows(final))
    assert rows["final runs"] == "3 member(s) over 2 fold(s)"
    assert rows["final test miou (mean ± std)"].startswith(f"{s.mean:.4f} ± {s.std:.4f} [95 % {s.low:.4f}, ")
    table = fold_table(final)
    assert "<td>1</td><td>2</td><td>0.8500</td><td>0.6000</td>" in table
    assert "<td>2</td><td>1</td><td>0.7000</td><td>0.6000</td>" in table


def test_no_fold_table_without_folds_and_the_members_are_the_ensemble_panels() -> None:
    members = _members([None, None, None])
    section = FinalSection("s/final", 3, 3, ["a", "b", "c"], members, _summary(members, {"oa": 0.92, "miou": 0.75}))
    final = read_final(_results(section))
    assert final is not None and not final.folded and fold_table(final) == ""
    assert "fold" not in dict(summary_rows(final))["final runs"]
    assert dict(summary_rows(final))["ensemble test miou"] == "0.7500"
    assert [str(p) for p in final.models] == [m.checkpoint for m in members]


def test_each_configuration_gets_its_own_row_when_there_are_several() -> None:
    from hpc.results import by_configuration, summarize

    members = [MemberResult(i, 10 + i, parent, rank, 0, None, f"/c/{i}.pt", {**t, "loss": 0.1, "f1": [0.5] * 3})
               for i, (parent, rank, t) in enumerate(zip([7, 7, 3], [0, 0, 1], TESTS, strict=True))]
    section = FinalSection("s/final", 3, 3, ["a", "b", "c"], members, summarize(members, None),
                           configurations=by_configuration(members))
    raw = _results(section)
    raw["final"]["configurations"] = dict(sorted(raw["final"]["configurations"].items()))  # as write_results sorts
    final = read_final(raw)
    assert final is not None and list(final.configurations) == ["7", "3"]  # best configuration first
    rows = dict(summary_rows(final))
    assert rows["final test miou, configuration of trial 7 (mean ± std)"] == f"0.6000 ± {0.2 / 2 ** 0.5:.4f}"
    assert rows["final test miou, configuration of trial 3 (mean ± std)"] == "0.6000 ± 0.0000"
    one = FinalSection("s/final", 2, 2, ["a", "b", "c"], members[:2], summarize(members[:2], None),
                       configurations=by_configuration(members[:2]))
    single = read_final(_results(one))
    assert single is not None and not any("configuration" in k for k, _ in summary_rows(single))


def test_per_class_error_bars_never_mix_configurations() -> None:
    """With top_k > 1 each configuration gets its own bars: the gap between two recipes is not noise."""
    from hpc.results import by_configuration, summarize

    members = [MemberResult(i, 10 + i, parent, rank, 0, None, f"/c/{i}.pt", {**t, "f1": [0.5] * 3})
               for i, (parent, rank, t) in enumerate(zip([7, 3, 7], [0, 1, 0], TESTS, strict=True))]
    section = FinalSection("s/final", 3, 3, ["a", "b", "c"], members, summarize(members, None),
                           configurations=by_configuration(members))
    final = read_final(_results(section))
    assert final is not None
    groups = final.per_class_groups("iou")
    assert [(g, n) for g, n, _, _ in groups] == [("7", 2), ("3", 1)]  # best configuration first
    np.testing.assert_allclose(groups[0][2], [0.45, 0.65, 0.6])  # members 0 and 2 only
    np.testing.assert_allclose(groups[0][3], [np.std([0.4, 0.5], ddof=1), np.std([0.6, 0.7], ddof=1), np.nan])
    np.testing.assert_allclose(groups[1][2], [0.6, 0.8, 0.7])
    np.testing.assert_allclose(groups[1][3], [0.0, 0.0, 0.0])
    same = members[::2]
    one = read_final(_results(FinalSection("s/final", 2, 2, ["a", "b", "c"], same, summarize(same, None),
                                           configurations=by_configuration(same))))
    assert one is not None and [(g, n) for g, n, _, _ in one.per_class_groups("iou")] == [(None, 2)]
