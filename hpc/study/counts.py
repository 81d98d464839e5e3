"""Trials by state and the best trial: one definition each, for the ask, healing, status, report and results.

"Finished" means COMPLETE + PRUNED: the count a search must reach exactly. The best trial is the best
COMPLETE value in the study's direction, ties going to the lower trial number (as ``study.best_trial``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState


@dataclass(frozen=True)
class Counts:
    """Trials per state."""

    complete: int = 0
    pruned: int = 0
    running: int = 0
    waiting: int = 0
    fail: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned

    @property
    def total(self) -> int:
        return self.complete + self.pruned + self.running + self.waiting + self.fail

    def by_state(self) -> dict[str, int]:
        """``{"RUNNING": n, "COMPLETE": n, ...}`` in Optuna's state order (results.json, status)."""
        return {s.name: getattr(self, s.name.lower()) for s in TrialState}

    @classmethod
    def from_states(cls, per_state: dict[TrialState, int]) -> Counts:
        return cls(**{s.name.lower(): int(per_state.get(s, 0)) for s in TrialState})

    @classmethod
    def of(cls, trials: Iterable[FrozenTrial]) -> Counts:
        per: dict[TrialState, int] = {}
        for t in trials:
            per[t.state] = per.get(t.state, 0) + 1
        return cls.from_states(per)


def ranked(trials: Iterable[FrozenTrial], direction: optuna.study.StudyDirection) -> list[FrozenTrial]:
    """COMPLETE trials with a value, best first (ties: lower number first)."""
    done = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    sign = 1.0 if direction == optuna.study.StudyDirection.MINIMIZE else -1.0
    return sorted(done, key=lambda t: (sign * float(t.value or 0.0), t.number))


def best(trials: Iterable[FrozenTrial], direction: optuna.study.StudyDirection) -> FrozenTrial | None:
    top = ranked(trials, direction)
    return top[0] if top else None
