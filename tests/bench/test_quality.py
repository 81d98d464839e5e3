"""bench/quality.py's table, read from results.json files holding the writer's own final section (no training)."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from bench.quality import RESULTS, base_config, header, main, parse, study_name, table
from hpc.results import FinalSection, MemberResult, summarize, write_results


def _member(i: int, miou: float, oa: float) -> MemberResult:
    test = {"loss": 1.0 - miou, "oa": oa, "miou": miou, "iou": [miou, miou], "f1": [oa, oa], "epoch": 3, "tiles": 2}
    return MemberResult(i, 10 + i, 0, 0, i, None, f"/s/final/trial-{10 + i}/best.pt", test)


def _results(tmp_path: Path, streams: str, mious: list[float], planned: int, ensemble: float | None) -> dict[str, Any]:
    """What the launcher's evaluation writes: results.json through hpc.results' writer, read back as JSON."""
    members = [_member(i, m, 0.5 + m / 2) for i, m in enumerate(mious)]
    ens = None if ensemble is None else {"miou": ensemble, "oa": 0.9, "loss": 0.1, "iou": [], "f1": [],
                                         "members": [m.checkpoint for m in members], "unpredicted": 0}
    section = FinalSection(f"{study_name(streams)}/final", planned, len(members), ["a", "b"], members,
                           summarize(members, ens))
    config = base_config(parse(["--out", str(tmp_path)]))
    config["hpc"]["final"] = {"seeds": planned}
    results = {"study": study_name(streams), "trials": {"requested": 2}, "config": config,
               "test": {"majority_baseline": {"miou": 0.04, "oa": 0.281}}, "final": asdict(section)}
    path = tmp_path / "runs" / study_name(streams) / RESULTS
    path.parent.mkdir(parents=True)
    write_results(path, results)
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


def test_table_gives_mean_std_interval_and_ensemble_per_variant(tmp_path: Path) -> None:
    both = _results(tmp_path, "both", [0.5, 0.7, 0.6], 3, 0.75)
    s1 = _results(tmp_path, "s1", [0.4], 3, None)  # one of three members finished: no std, no ensemble
    lines = table({"both": both, "s1": s1}).splitlines()
    assert lines[0].startswith("| model | search trials | seeds | test mIoU mean ± std [95 % interval] |")
    assert lines[2] == "| majority class | - | - | 0.040 | 0.281 | - | - |"
    spread = both["final"]["summary"]["metrics"]["miou"]
    assert spread["std"] == pytest.approx(0.1) and spread["low"] < 0.6 < spread["high"]
    assert lines[3] == (f"| dual-stream (S1 + S2) | 2 | 3 | 0.600 ± 0.100 [{spread['low']:.3f}, {spread['high']:.3f}] "
                        "| 0.800 ± 0.050 | 0.750 | 0.500 / 0.700 / 0.600 |")
    assert lines[4] == "| S1 only | 2 | 1 of 3 | 0.400 ± - [0.400, 0.400] | 0.700 ± - | - | 0.400 |"
    text = header({"both": both})
    assert "12 tiles 64x64" in text and "1 search trial" not in text and "2 search trial(s)" in text
    assert "retrained with 3 seeds" in text


def test_final_runs_not_evaluated_is_an_error_not_a_row(tmp_path: Path) -> None:
    bad = _results(tmp_path, "both", [0.5, 0.6], 2, 0.6)
    bad["final"] = {"study": "quality-both/final", "error": "final study quality-both/final: no COMPLETE member"}
    with pytest.raises(ValueError, match="no COMPLETE member"):
        table({"both": bad})
    del bad["final"]
    with pytest.raises(ValueError, match="no final section"):
        table({"both": bad})


def test_no_run_prints_the_table_of_earlier_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _results(tmp_path, "both", [0.5, 0.7], 2, 0.65)
    _results(tmp_path, "s2", [0.3, 0.5], 2, 0.45)
    assert main(["--no-run", "--out", str(tmp_path), "--streams", "both,s2"]) == 0
    out = capsys.readouterr().out
    assert "| dual-stream (S1 + S2) | 2 | 2 | 0.600 ± 0.141" in out and "| S2 only | 2 | 2 | 0.400 ± 0.141" in out
    assert not (tmp_path / "quality.yaml").exists()  # --no-run writes nothing
    assert main(["--no-run", "--out", str(tmp_path), "--streams", "s1"]) == 2
    assert "quality-s1" in capsys.readouterr().err
    assert main(["--out", str(tmp_path), "--streams", "s1,s2"]) == 2  # never launches over an earlier run's studies
    assert "quality-s2 exists" in capsys.readouterr().err and not (tmp_path / "quality.yaml").exists()
