"""hpc.study.counts: trials by state and the best trial, as the study itself ranks them."""

from __future__ import annotations

import optuna
from optuna.trial import TrialState

from hpc.study import Counts, best, ranked


def _trials() -> list[optuna.trial.FrozenTrial]:
    made = [optuna.create_trial(value=v) for v in (0.5, 0.2, 0.2, 0.9)]
    made += [optuna.create_trial(state=TrialState.PRUNED), optuna.create_trial(state=TrialState.FAIL),
             optuna.create_trial(state=TrialState.WAITING)]
    for i, t in enumerate(made):
        t.number = i
    return made


def test_counts_by_state_and_finished() -> None:
    c = Counts.of(_trials())
    assert (c.complete, c.pruned, c.fail, c.waiting, c.running) == (4, 1, 1, 1, 0)
    assert c.finished == 5 and c.total == 7
    assert c.by_state() == {"RUNNING": 0, "COMPLETE": 4, "PRUNED": 1, "FAIL": 1, "WAITING": 1}


def test_best_matches_optuna_in_both_directions() -> None:
    for direction in ("minimize", "maximize"):
        study = optuna.create_study(direction=direction)
        for t in _trials():
            study.add_trial(t)
        top = best(study.trials, study.direction)
        assert top is not None and top.number == study.best_trial.number
        assert [t.number for t in ranked(study.trials, study.direction)][0] == study.best_trial.number
    assert best([optuna.create_trial(state=TrialState.FAIL)], optuna.study.StudyDirection.MINIMIZE) is None


def test_ties_go_to_the_lower_number() -> None:
    assert [t.number for t in ranked(_trials(), optuna.study.StudyDirection.MINIMIZE)] == [1, 2, 0, 3]
