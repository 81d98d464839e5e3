"""Self-healing: when every worker is gone and the study is short of its count, start new workers.

The evaluation job runs ``afterany`` the array, i.e. when no worker of it remains. If the study then
holds fewer finished trials than requested (tasks failed, were cancelled, or hit ``max_num_timeout``),
it fails the RUNNING trials whose jobs are gone (Optuna's retry callback re-queues them with their
parameters and checkpoints), resubmits workers for the remainder — at most ``hpc.max_resubmits``
times per study — and submits a new evaluation job after them; only a complete (or exhausted) study
is evaluated. If some array task is still queued (e.g. requeued and pending), it just waits for it.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Literal

import optuna
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from dualseg.config import Config, from_dict
from hpc import slurm
from hpc.config import HpcConfig
from hpc.storage import PASSFILE_ENV, Database, StorageURL, critical_section
from hpc.submit import jobs
from hpc.submit.jobs import Plan
from hpc.trials import count_states, finished

log = logging.getLogger("hpc.heal")
Outcome = Literal["complete", "waiting", "resubmitted", "exhausted"]


def plan_from_study(db: Database, study_name: str, storage: StorageURL, scratch: Path | None) -> Plan:
    """The launch's plan, rebuilt from what the launcher recorded in the study."""
    attrs = db.load_study(study_name).user_attrs
    cfg = from_dict(Config, attrs["config"])
    hpc = from_dict(HpcConfig, {**attrs.get("launch", {}), "study": study_name})
    scratch_dir = Path(scratch or attrs.get("scratch") or "runs")
    passfile = os.environ.get(PASSFILE_ENV)
    return Plan(cfg, hpc, "slurm", scratch_dir, storage, attrs.get("incarnation"),
                Path(passfile) if passfile else None)


def fail_orphans(db: Database, study: optuna.Study, storage: StorageURL, max_retry: int) -> int:
    """No worker of the study remains: fail its RUNNING trials now (not after ``grace_period``) and re-queue
    them with their parameters; returns how many. Under the study lock, like every trial creation."""
    callback = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)
    n = 0
    with critical_section(db.engine, storage, study.study_name):
        for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if db.storage.set_trial_state_values(t._trial_id, TrialState.FAIL):  # its job is gone
                log.warning("trial %d was RUNNING but no worker remains: failed and re-queued", t.number)
                callback(study, db.storage.get_trial(t._trial_id))
                n += 1
    return n


def heal(db: Database, study_name: str, storage: StorageURL, scratch: Path | None = None) -> Outcome:
    study = db.load_study(study_name)
    attrs = study.user_attrs
    with Session(db.engine) as s:
        counts = count_states(s, study._study_id)
    target = int(attrs.get("trials") or 0)
    done = finished(counts)
    if done >= target:
        return "complete"
    arrays = [str(a) for a in attrs.get("arrays", [])]
    plan = plan_from_study(db, study_name, storage, scratch)
    res = jobs.eval_resources(plan, jobs.partition_node(plan))
    queued = [a for a in arrays if slurm.any_queued([a])]
    if queued:
        eval_id = jobs.submit_eval(plan, ":".join(queued), res)
        log.warning("study %s: %d/%d finished and array(s) %s still queued: evaluation job %s waits for them",
                    study_name, done, target, ",".join(queued), eval_id)
        return "waiting"
    fail_orphans(db, study, storage, plan.hpc.max_retry)
    resubmits = int(attrs.get("resubmits", 0))
    if resubmits >= plan.hpc.max_resubmits:
        log.warning("study %s: %d/%d finished, no worker left and hpc.max_resubmits=%d reached: evaluating as is",
                    study_name, done, target, plan.hpc.max_resubmits)
        return "exhausted"
    workers = max(1, min(plan.hpc.workers, target - done))
    array_id = jobs.submit_array(plan, workers)
    study.set_user_attr("arrays", arrays + [array_id])
    study.set_user_attr("resubmits", resubmits + 1)
    eval_id = jobs.submit_eval(plan, array_id, res)
    log.warning("study %s: %d/%d finished and no worker left: resubmitted %d worker(s) as array %s "
                "(resubmission %d/%d); evaluation job %s follows them", study_name, done, target, workers, array_id,
                resubmits + 1, plan.hpc.max_resubmits, eval_id)
    print(f"resubmitted array {array_id} ({workers} worker(s)); evaluation job {eval_id} follows it", flush=True)
    return "resubmitted"
