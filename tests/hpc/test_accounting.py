"""hpc.accounting: allocation efficiency from the trials' step seconds and the jobs' recorded allocations."""

from __future__ import annotations

import optuna

from hpc.accounting import allocation_efficiency
from hpc.study import StudyRecord, allocation_key


def test_efficiency_is_busy_over_allocated_rank_seconds() -> None:
    trials = [optuna.create_trial(value=1.0, user_attrs={"busy_s": 30.0}),
              optuna.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"busy_s": 10.0}),
              optuna.create_trial(state=optuna.trial.TrialState.FAIL)]
    attrs = {"launch": {"nodes": 2, "gpus_per_node": 4},  # 8 ranks per trial
             allocation_key("7_0", 0): 400.0, allocation_key("7_0", 1): 100.0, allocation_key("7_1", 0): 300.0,
             "trials": 2}
    a = allocation_efficiency(trials, StudyRecord.from_attrs(attrs))
    assert a == {"busy_rank_s": 320.0, "allocated_rank_s": 800.0, "efficiency": 0.4}
    assert allocation_efficiency(trials, StudyRecord())["efficiency"] is None  # nothing recorded yet
