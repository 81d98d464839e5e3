"""Allocation efficiency: how much of the compute the workers were given went into training steps.

Each job records its allocated rank-seconds in the study (one user attribute per job run, updated at
exit: ``alloc:<array>_<task>:<restart>``), each finished trial its seconds in training and validation
steps (``busy_s``, from the trainer's ``train_time_s`` + ``val_time_s``). Their ratio is what start-up,
waiting for the last trials, requeue gaps and evaluation cost the search.
"""

from __future__ import annotations

from typing import Any

import optuna

ALLOC_PREFIX = "alloc:"


def allocation_key(label: str, restart: int) -> str:
    return f"{ALLOC_PREFIX}{label}:{restart}"


def allocation_efficiency(trials: list[optuna.trial.FrozenTrial], attrs: dict[str, Any]) -> dict[str, Any]:
    """Rank-seconds in training/validation steps / rank-seconds allocated to the workers (None until recorded)."""
    launch = attrs.get("launch", {})
    world = int(launch.get("nodes", 1)) * max(1, int(launch.get("gpus_per_node", 0)))
    busy = sum(float(t.user_attrs.get("busy_s", 0.0)) for t in trials) * world
    allocated = sum(float(v) for k, v in attrs.items() if k.startswith(ALLOC_PREFIX))
    return {"busy_rank_s": round(busy, 1), "allocated_rank_s": round(allocated, 1) or None,
            "efficiency": round(busy / allocated, 3) if allocated else None}
