"""What the final runs are: members planned from the parent's ranking (configuration x fold x seed), and
replanned when that ranking changes.

A search extended with ``--allow-change`` after its final runs ran has a new ranking; reusing the old final
study as it was would publish the spread of a configuration that is no longer the best. :func:`replan`
keeps every member the new ranking still wants (nothing retrained), adds the new ones and marks the rest
stale: they stay in the study (finished trials count towards its exact count) but are never evaluated.
"""

from __future__ import annotations

import logging
from typing import Any

from optuna.distributions import distribution_to_json
from optuna.trial import FrozenTrial

from dualseg import code_version
from dualseg.config import Config, from_dict
from dualseg.data.folds import require_folds
from dualseg.errors import InputError
from hpc.config import FinalConfig, parse_hpc
from hpc.study import FinalMember, FinalPlan, OpenStudy, StudyRecord, TrialRecord, ranked

log = logging.getLogger("hpc.final")
REFIT_OBJECTIVE = "train_loss"  # what a final study with refit train+val is told (no validation split)


def final_config(record: StudyRecord) -> FinalConfig:
    """The parent study's ``hpc.final``, as launched."""
    return parse_hpc(from_dict(Config, record.config or {})).final if record.config else FinalConfig()


def check_final(cfg: Config, final: FinalConfig) -> None:
    """The checks that need the data (launch and ``--dry-run``): folds on a dataset that has none."""
    if final.on and final.folds == "all":
        require_folds(cfg.data)


def plan_members(parent: str, trials: list[FrozenTrial], direction: Any, final: FinalConfig,
                 cfg: Config) -> list[FinalMember]:
    """Members in order: configuration (best first) x fold rotation x seed."""
    top = ranked(trials, direction)
    if len(top) < final.top_k:
        raise InputError(f"hpc.final.top_k: {final.top_k} configurations asked, but study {parent!r} has only "
                         f"{len(top)} complete trial(s)")
    folds = require_folds(cfg.data) if final.folds == "all" else None
    rotations: list[tuple[int | None, str | None]] = \
        [(i, name) for i, name in enumerate(folds)] if folds is not None else [(None, None)]
    members = []
    for rank, trial in enumerate(top[:final.top_k]):
        epochs = _epochs(trial, final, parent)
        dists = {k: distribution_to_json(d) for k, d in trial.distributions.items()}
        for fold, fold_name in rotations:
            members += [FinalMember(parent, trial.number, rank, cfg.train.seed + s, dict(trial.params), fold,
                                    fold_name, epochs, dists) for s in range(final.seeds)]
    return members


def _epochs(trial: FrozenTrial, final: FinalConfig, parent: str = "") -> int | None:
    if isinstance(final.epochs, int):
        return final.epochs
    if final.epochs == "fixed":
        return None
    rec = TrialRecord.of(trial)
    if rec.best_epoch is None or rec.best_epoch < 0:
        raise InputError(f"hpc.final.epochs: best, but trial {trial.number} recorded no best epoch")
    log.warning("hpc.final.epochs: best -> %d epoch(s) for the configuration of trial %d of study %s: its best "
                "epoch %d (chosen on %s, trial attribute best_epoch) + 1", rec.best_epoch + 1, trial.number, parent,
                rec.best_epoch, rec.monitor or "the objective")
    return rec.best_epoch + 1  # epochs are counted from 0


def replan(plan: FinalPlan, fresh: list[FinalMember], reuse: bool) -> tuple[FinalPlan, list[int]]:
    """The plan once the parent's ranking changed (a search extended with ``--allow-change``); with the
    indices of the members to add. A current member the fresh plan still wants keeps its trial (its rank
    updated; nothing retrained); the others become stale. ``reuse`` False (the config or the refit changed):
    every current member is stale."""
    members, stale = list(plan.members), set(plan.stale)
    current = {i: members[i] for i in plan.current()}
    added: list[int] = []
    for want in fresh:
        have = next((i for i, m in current.items() if reuse and m.same_run(want)), None)
        if have is None:
            added.append(len(members))
            members.append(want)
        else:
            members[have] = want
            del current[have]
    return FinalPlan(plan.parent, members, plan.refit, sorted(stale | set(current))), added


def fresh_record(parent: OpenStudy, name: str) -> StudyRecord:
    """What the final study of the parent as it stands now would record (no incarnation yet)."""
    rec = parent.record
    final = final_config(rec)
    cfg = from_dict(Config, rec.config or {})
    members = plan_members(parent.study.study_name, parent.trials(), parent.study.direction, final, cfg)
    workers = max(1, min(int(rec.launch.get("workers", 1)), len(members)))
    # a refit without validation has no val metric to tell: its trials tell their last training loss
    objective = REFIT_OBJECTIVE if final.refit == "train+val" else rec.objective
    return StudyRecord(config=rec.config, trials=len(members), scratch=rec.scratch, objective=objective,
                       code_version=code_version(), launch={**rec.launch, "study": name, "trials": len(members),
                                                            "workers": workers},
                       final=FinalPlan(parent.study.study_name, members, final.refit))
