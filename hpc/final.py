"""Final runs (``hpc.final``): the best configuration(s) retrained over seeds and folds, as trials of a second study.

One search result is one draw; a publishable number is a mean with its spread. Once the search is complete
the evaluation job creates the study ``<study>/final`` in the same storage, with one WAITING trial per member
(``enqueue_trial``: parameters fixed to the parent trial's, the member index a trial attribute), and submits
workers for it: the *same* :class:`hpc.worker.Worker` array through :mod:`hpc.submit`, so final runs get the
exact count, checkpoints, requeue, heartbeat retry and self-healing of any trial. The final study's
:class:`hpc.study.StudyRecord` says which parent trial, seed and fold each member is
(:class:`hpc.study.FinalPlan`); the worker's :class:`hpc.trials.Coordinator` turns a member into its
overrides (:func:`member_overrides`) instead of sampling, records the member's parameters as the trial's Optuna
params (:func:`record_params`), and never prunes. Which members there are is :mod:`hpc.final_plan`'s.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import optuna
from optuna.distributions import json_to_distribution
from optuna.trial import TrialState

from dualseg.config import Config, DataConfig, from_dict
from dualseg.data.folds import read_folds, rotation
from dualseg.data.splits import resolve_splits
from dualseg.errors import InputError
from hpc.config import FINAL_SUFFIX
from hpc.final_plan import REFIT_OBJECTIVE, final_config, fresh_record, replan
from hpc.paths import claim_study_dir, new_incarnation, study_scratch
from hpc.relaunch import config_changes
from hpc.storage import Database, StorageURL, create_or_load_study, critical_section, exclusive, open_database
from hpc.study import (
    MEMBER,
    Counts,
    FinalMember,
    FinalPlan,
    OpenStudy,
    StudyRecord,
    TrialRecord,
    open_study,
)
from hpc.study.schema import study_id

log = logging.getLogger("hpc.final")
Stage = Literal["off", "submitted", "waiting", "resubmitted", "complete", "exhausted"]


def final_name(study: str) -> str:
    return study + FINAL_SUFFIX


def parent_name(study: str) -> str:
    """The search a study name belongs to (a final study's evaluation job is the parent's)."""
    return study.removesuffix(FINAL_SUFFIX)


def member_overrides(member: FinalMember, data: DataConfig, refit: str = "train") -> dict[str, Any]:
    """What makes a member itself beyond its parameters: its seed (model init and data order), its fold's
    tile lists, its epoch count (no early stop then: the count was derived to be trained); with ``refit:
    train+val`` the validation tiles join the training tiles and the trainer runs without validation."""
    out: dict[str, Any] = {**member.params, "train.seed": member.seed, "data.seed": member.seed}
    split: dict[str, list[str]] | None = None
    if member.fold is not None:
        folds = read_folds(data)
        if folds is None or member.fold_name not in folds:
            raise InputError(f"hpc.final: member of fold {member.fold_name} but {data.root} no longer records it")
        split = rotation(folds, member.fold)
        out |= {"data.train_tiles": split["train"], "data.val_tiles": split["val"], "data.test_tiles": split["test"]}
    if member.epochs is not None:
        out |= {"train.epochs": member.epochs, "train.patience": member.epochs + 1}
    if refit == "train+val":
        if member.epochs is None:
            raise InputError("hpc.final.epochs: refit train+val needs a derived epoch count (best or a number)")
        split = split or resolve_splits(data, ("train", "val"))
        out |= {"data.train_tiles": split["train"] + split["val"], "data.val_tiles": [], "train.validate": False}
    return out


def claim_member(db: Database, study: str, sid: int, trial_id: int, final: FinalPlan, config: dict[str, Any],
                 lock_timeout_s: float) -> dict[str, Any]:
    """The overrides of the member a final trial runs (the worker's Coordinator, instead of sampling): the
    trial's own ``member`` (enqueued, or inherited by a retry), else the first member no live trial holds
    (a member whose retries ran out gets a fresh trial), chosen under the study lock."""
    frozen = db.storage.get_trial(trial_id)
    index = TrialRecord.of(frozen).member
    # the plan as the study records it now: a worker started before a replan (hpc.final_plan) holds an older one
    final = StudyRecord.from_attrs(db.storage.get_study_user_attrs(sid)).final or final
    if index is None:
        with critical_section(db.engine, db.url, study, lock_timeout_s):
            others = [t for t in db.storage.get_all_trials(sid, deepcopy=False)
                      if t.number != frozen.number and t.state != TrialState.FAIL]
            held = {TrialRecord.of(t).member for t in others}
            index = next((i for i in final.current() if i not in held), None)
            if index is None:
                raise InputError(f"final trial {frozen.number}: every member of {study} is held by another trial")
            db.storage.set_trial_user_attr(trial_id, MEMBER, index)
    member = final.members[index]
    record_params(db, sid, trial_id, frozen.params, member)
    log.info("final trial %d is member %d: trial %d of %s, seed %d%s%s", frozen.number, index, member.parent_trial,
             member.parent_study, member.seed, "" if member.fold is None else f", fold {member.fold_name}",
             "" if final.refit == "train" else f", refit on {final.refit} for {member.epochs} epoch(s) "
                                               "(no validation; the objective told is the last train_loss)")
    return member_overrides(member, from_dict(Config, config).data, final.refit)


def record_params(db: Database, sid: int, trial_id: int, have: dict[str, Any], member: FinalMember) -> None:
    """The member's parameters as the trial's own Optuna params, with the parent trial's distributions.

    ``enqueue_trial`` only *fixes* parameters: they become ``trial.params`` when suggested, and a final trial
    suggests nothing, so ``trials_dataframe()`` and the dashboard would show none. Set where the trial is
    claimed (enqueued, retried or fresh alike); ones it already has are kept, so a retried claim is harmless.
    """
    missing = [name for name in member.distributions if name in member.params and name not in have]
    if missing:  # Optuna's cached storage sets params only on trials it has read (ours was created by SQL)
        db.storage.get_all_trials(sid, deepcopy=False)
    for name in missing:
        dist = json_to_distribution(member.distributions[name])
        db.storage.set_trial_param(trial_id, name, dist.to_internal_repr(member.params[name]), dist)


def member_config(record: StudyRecord, member: FinalMember) -> Config:
    from dualseg.config import apply_overrides

    cfg = from_dict(Config, record.config or {})
    return apply_overrides(cfg, member_overrides(member, cfg.data, record.final.refit if record.final else "train"))


def ensure_final_study(parent: OpenStudy, storage: StorageURL, scratch: Path | None) -> tuple[StudyRecord, bool]:
    """The final study of a complete search, created once (its members enqueued), or brought up to the
    parent's ranking; (record, members to run were enqueued now)."""
    name = final_name(parent.study.study_name)
    db = parent.db
    with exclusive(db.engine, db.url, f"{name}/create", timeout_s=600):
        fresh = fresh_record(parent, name)
        assert fresh.final is not None
        try:
            study = db.load_study(name)
        except InputError:
            study = None
        if study is not None:
            return _bring_up_to_date(OpenStudy(db, study, StudyRecord.read(study)), fresh)
        fresh.incarnation = new_incarnation()
        claim_study_dir(study_scratch(scratch, fresh.scratch) / name, fresh.incarnation, name)
        direction = "minimize" if fresh.objective == REFIT_OBJECTIVE else parent.study.direction.name.lower()
        study = create_or_load_study(db, name, direction, fresh.launch_attrs())
        with critical_section(db.engine, db.url, name):  # every trial of a study is created under its lock
            for i, m in enumerate(fresh.final.members):
                study.enqueue_trial(m.params, user_attrs={MEMBER: i})
        log.warning("study %s: %d final run(s) of the best %d configuration(s) in study %s", name,
                    len(fresh.final.members), final_config(parent.record).top_k, parent.study.study_name)
        return fresh, True


def _bring_up_to_date(final: OpenStudy, fresh: StudyRecord) -> tuple[StudyRecord, bool]:
    """An existing final study: as planned (the usual case: a later evaluation job), or replanned."""
    have, want = final.record.final, fresh.final
    assert have is not None and want is not None
    reuse = have.refit == want.refit and not config_changes(final.record.config or {}, fresh.config or {})
    plan, added = replan(have, want.members, reuse)
    if plan == have:
        return final.record, False
    name, storage = final.study.study_name, final.db.storage
    workers = max(1, min(int(fresh.launch.get("workers", 1)), len(added) or 1))  # the workers count to the total
    attrs = {"final": asdict(plan), "trials": len(plan.members), "config": fresh.config, "objective": fresh.objective,
             "launch": {**fresh.launch, "trials": len(plan.members), "workers": workers}}
    sid = study_id(final.study)
    # plan and trials in one critical section: a live final worker claims under the same lock, so it never
    # sees a member without its enqueued trial (it would claim it fresh, and the member would train twice)
    with critical_section(final.db.engine, final.db.url, name):
        for key, value in attrs.items():
            storage.set_study_user_attr(sid, key, value)
        for i in added:
            final.study.enqueue_trial(plan.members[i].params, user_attrs={MEMBER: i})
    record = final.record = StudyRecord.from_attrs(storage.get_study_user_attrs(sid))
    log.warning("study %s: the ranking of %s changed: %d final run(s) added, %d of the earlier plan kept, %d "
                "stale (kept, not evaluated)", name, have.parent, len(added), len(plan.current()) - len(added),
                len(plan.stale))
    return record, bool(added)


def final_stage(storage: StorageURL, parent: str, scratch: Path | None, local: bool = False) -> Stage:
    """The evaluation job's step after a complete search: create and submit the final runs, or heal them.

    ``submitted``/``waiting``/``resubmitted``: a later evaluation job (afterany the final array) comes back.
    """
    with open_study(storage, parent, budget_s=300) as opened:
        if not final_config(opened.record).on:
            return "off"
        record, created = ensure_final_study(opened, storage, scratch)
    name = final_name(parent)
    if local:
        return "submitted" if created else "complete"
    from hpc.heal import heal, plan_from_record
    from hpc.submit import jobs

    if created:
        plan = plan_from_record(record, name, storage, scratch)
        plan.logdir.mkdir(parents=True, exist_ok=True)
        res = jobs.eval_resources(plan, jobs.partition_node(plan))
        array_id = jobs.submit_array(plan, plan.hpc.workers)
        with open_study(storage, name, budget_s=60) as final:
            from hpc.study import update_record

            update_record(final, lambda r: {"arrays": [*r.arrays, array_id]})
        eval_id = jobs.submit_eval(plan, array_id, res)
        print(f"final runs: array {array_id} ({len(record.final.members) if record.final else 0} member(s)); "
              f"evaluation job {eval_id} follows it", flush=True)
        return "submitted"
    with open_study(storage, name, budget_s=300) as final:
        return heal(final, storage, scratch)


def run_final_local(storage: StorageURL, parent: str, scratch: Path) -> list[str]:
    """The local default: the final study's workers through the local backend, followed like the search."""
    from hpc.heal import plan_from_record
    from hpc.progress import Interrupted, follow_local, stop_local
    from hpc.submit import jobs

    if final_stage(storage, parent, scratch, local=True) == "off":
        return []
    name = final_name(parent)
    with open_study(storage, name, budget_s=60) as opened:
        plan = plan_from_record(opened.record, name, storage, scratch)
    plan.executor = "local"
    plan.logdir.mkdir(parents=True, exist_ok=True)
    stale = frozenset(opened.record.final.stale if opened.record.final else [])
    current = plan.hpc.trials - len(stale)
    print(f"final runs: study {name}, {current} member(s)", flush=True)
    workers = jobs.run_local_workers(plan)
    try:
        return follow_local(plan, workers, hidden=stale, target=current)
    except KeyboardInterrupt:  # this stage's workers and trials, not the search's (done by now)
        raise Interrupted(name, stop_local(plan, workers)) from None


def _current_counts(study: optuna.Study) -> tuple[Counts, int]:
    """The counts of a final study's trials and its member total, stale members (hpc.final_plan) left out."""
    record = StudyRecord.read(study)
    stale = set(record.final.stale) if record.final else set()
    counts = Counts.of([t for t in study.get_trials(deepcopy=False) if TrialRecord.of(t).member not in stale])
    return counts, record.trials - len(stale)


def final_pending(db: Database, parent: str, record: StudyRecord) -> bool:
    """A complete search whose final runs are on but not all finished (Ctrl-C, a cancelled final array):
    launching it again resumes them instead of being refused as complete."""
    if not final_config(record).on:
        return False
    try:
        counts, total = _current_counts(db.load_study(final_name(parent)))
    except InputError:
        return True
    return counts.finished < total


def final_progress(storage: StorageURL, parent: str) -> dict[str, int] | None:
    """Members complete/running/total of the final study, or None when there is none (status)."""
    db = open_database(storage, budget_s=30)
    try:
        try:
            counts, total = _current_counts(db.load_study(final_name(parent)))
        except InputError:
            return None
    finally:
        db.close()
    return {"complete": counts.complete, "running": counts.running, "waiting": counts.waiting,
            "failed": counts.fail, "total": total}
