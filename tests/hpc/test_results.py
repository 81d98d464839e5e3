"""results.json's ``final`` section (hpc.results): spread over all members, per configuration, strict JSON."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest

from hpc.results import FinalSection, MemberResult, by_configuration, summarize, write_results


def _member(i: int, parent: int, rank: int, miou: float) -> MemberResult:
    test = {"loss": 1.0 - miou, "oa": miou + 0.1, "miou": miou, "iou": [miou, None], "f1": [miou, 0.5]}
    return MemberResult(i, 20 + i, parent, rank, i % 2, None, f"/s/final/trial-{20 + i}/best.pt", test)


# top_k 2, seeds 2: trial 7 (best) at 0.8/0.9, trial 3 at 0.3/0.5 — members in member order
MEMBERS = [_member(0, 7, 0, 0.8), _member(1, 7, 0, 0.9), _member(2, 3, 1, 0.3), _member(3, 3, 1, 0.5)]


def test_spread_per_configuration_keeps_recipes_apart_and_the_overall_mixes_them() -> None:
    configs = by_configuration(MEMBERS)
    assert list(configs) == ["7", "3"]  # best configuration first, keyed by its parent trial
    best, second = configs["7"], configs["3"]
    assert best.members == [0, 1] and second.members == [2, 3]
    assert best.metrics["miou"] is not None and best.metrics["miou"].mean == pytest.approx(0.85)
    assert best.metrics["miou"].std == pytest.approx(0.1 / 2 ** 0.5)
    assert second.metrics["miou"] is not None and second.metrics["miou"].mean == pytest.approx(0.4)
    assert 0.3 <= second.metrics["miou"].low <= second.metrics["miou"].high <= 0.5
    assert best.ensemble is None and second.ensemble is None  # the ensemble is over all members (or per fold)
    overall = summarize(MEMBERS, {"miou": 0.7})
    assert overall.metrics["miou"] is not None and overall.metrics["miou"].mean == pytest.approx(0.625)
    assert overall.metrics["miou"].n == 4 and overall.ensemble == {"miou": 0.7}
    assert [s.n if s else None for s in best.iou] == [2, None]  # a class absent from every member: no spread
    assert by_configuration(MEMBERS[:2]).keys() == {"7"}


def test_the_section_is_written_as_strict_json_with_its_configurations(tmp_path: Path) -> None:
    section = FinalSection("s/final", 4, 4, ["a", "b"], MEMBERS, summarize(MEMBERS, None),
                           configurations=by_configuration(MEMBERS))
    raw = json.loads(write_results(tmp_path / "results.json", {"final": asdict(section)}).read_text())["final"]
    assert raw["configurations"]["3"]["metrics"]["miou"]["n"] == 2
    assert raw["configurations"]["7"]["iou"][1] is None and raw["summary"]["metrics"]["miou"]["n"] == 4
