"""hpc.keep: last.pt goes when a trial finishes, best.pt of the top-k stays at the end, usage is counted."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from dualseg.errors import InputError
from hpc.retention import KeepPolicy, keep_policy, on_study_finished, on_trial_finished, scratch_usage


def _study(tmp_path: Path, values: list[float | None], states: list[TrialState]) -> optuna.Study:
    study = optuna.create_study(direction="minimize")
    for i, (v, s) in enumerate(zip(values, states)):
        t = study.ask()
        for name, size in (("last.pt", 300), ("best.pt", 200), ("metrics.jsonl", 10)):
            (tmp_path / f"trial-{t.number}").mkdir(exist_ok=True)
            (tmp_path / f"trial-{t.number}" / name).write_bytes(b"x" * (size + i))
        if s != TrialState.RUNNING:
            study.tell(t, v if s == TrialState.COMPLETE else None, state=s)
    return study


def test_trial_finish_then_study_end(tmp_path: Path) -> None:
    states = [TrialState.COMPLETE] * 4 + [TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING]
    study = _study(tmp_path, [0.5, 0.2, 0.9, 0.3, None, None, None], states)
    before = scratch_usage(tmp_path)
    assert before["files"] == 21 and before["checkpoint_bytes"] == sum(500 + 2 * i for i in range(7))
    policy = keep_policy({"best_top_k": 2})
    for t in study.trials:
        on_trial_finished(tmp_path, t.number, t.state, policy)
    # COMPLETE/PRUNED lose last.pt; FAILED keeps it (a retry is seeded from it); RUNNING untouched
    assert sorted(p.parent.name for p in tmp_path.glob("*/last.pt")) == ["trial-5", "trial-6"]
    res = on_study_finished(tmp_path, study.trials, study.direction, policy)
    assert res["kept"] == [1, 3]  # values 0.2 and 0.3, best first
    assert sorted(p.parent.name for p in tmp_path.glob("*/best.pt")) == ["trial-1", "trial-3", "trial-6"]
    assert sorted(p.parent.name for p in tmp_path.glob("*/last.pt")) == ["trial-6"]
    assert len(list(tmp_path.glob("*/metrics.jsonl"))) == 7  # learning curves stay for the report
    after = scratch_usage(tmp_path)
    assert before["bytes"] - after["bytes"] == res["freed_bytes"] + sum(300 + i for i in range(5))
    assert after["trials"]["trial-6"] == 300 + 200 + 10 + 3 * 6


def test_policy_keep_everything_and_validation(tmp_path: Path) -> None:
    s = _study(tmp_path, [0.1, 0.7], [TrialState.COMPLETE, TrialState.COMPLETE])
    policy = KeepPolicy(last=True, best_top_k=-1)
    assert on_trial_finished(tmp_path, 0, TrialState.COMPLETE, policy) == 0
    assert on_study_finished(tmp_path, s.trials, s.direction, policy) == {"kept": [0, 1], "freed_bytes": 0}
    assert len(list(tmp_path.glob("*/*.pt"))) == 4
    with pytest.raises(InputError, match="unknown key hpc.keep.best"):
        keep_policy({"best": 2})
    with pytest.raises(InputError, match="hpc.keep.best_top_k must be >= 0"):
        keep_policy({"best_top_k": -3})
    assert scratch_usage(tmp_path / "nothing")["bytes"] == 0
