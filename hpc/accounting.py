"""Allocation efficiency: how much of the compute the workers were given went into training steps.

Each job records its allocated rank-seconds in the study (one attribute per job run, updated at exit:
:func:`hpc.study.allocation_key`), each finished trial its seconds in training and validation steps
(``busy_s``, from the trainer's ``train_time_s`` + ``val_time_s``). Their ratio is what start-up,
waiting for the last trials, requeue gaps and evaluation cost the search.
"""

from __future__ import annotations

from typing import Any

import optuna

from hpc.study import StudyRecord, TrialRecord


def allocation_efficiency(trials: list[optuna.trial.FrozenTrial], record: StudyRecord) -> dict[str, Any]:
    """Rank-seconds in training/validation steps / rank-seconds allocated to the workers (None until recorded)."""
    busy = sum(TrialRecord.of(t).busy_s for t in trials) * record.world_size
    allocated = sum(record.allocations.values())
    return {"busy_rank_s": round(busy, 1), "allocated_rank_s": round(allocated, 1) or None,
            "efficiency": round(busy / allocated, 3) if allocated else None}
