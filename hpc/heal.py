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

from dualseg.config import Config, from_dict
from hpc import slurm
from hpc.config import HpcConfig
from hpc.paths import study_scratch
from hpc.storage import PASSFILE_ENV, StorageURL, critical_section
from hpc.study import Counts, OpenStudy, StudyRecord, fail_trials, update_record
from hpc.study.schema import running_ids, study_id
from hpc.submit import jobs
from hpc.submit.jobs import Plan

log = logging.getLogger("hpc.heal")
Outcome = Literal["complete", "waiting", "resubmitted", "exhausted"]


def plan_from_record(record: StudyRecord, study_name: str, storage: StorageURL, scratch: Path | None) -> Plan:
    """The launch's plan, rebuilt from what the launcher recorded in the study."""
    cfg = from_dict(Config, record.config or {})
    hpc = from_dict(HpcConfig, {**record.launch, "study": study_name})
    passfile = os.environ.get(PASSFILE_ENV)
    return Plan(cfg, hpc, "slurm", study_scratch(scratch, record.scratch), storage, record.incarnation,
                Path(passfile) if passfile else None)


def fail_orphans(opened: OpenStudy, max_retry: int) -> int:
    """No worker of the study remains: fail its RUNNING trials now (not after ``grace_period``) and re-queue
    them with their parameters; returns how many. Under the study lock, like every trial creation."""
    db, study = opened.db, opened.study
    with critical_section(db.engine, db.url, study.study_name) as s:
        orphans = running_ids(s, study_id(study))
        return len(fail_trials(db, study, orphans, "was RUNNING but no worker remains", max_retry))


def heal(opened: OpenStudy, storage: StorageURL, scratch: Path | None = None) -> Outcome:
    record, name = opened.record, opened.study.study_name
    counts = Counts.of(opened.trials())
    target, done = record.trials, counts.finished
    if done >= target:
        return "complete"
    plan = plan_from_record(record, name, storage, scratch)
    res = jobs.eval_resources(plan, jobs.partition_node(plan))
    queued = [a for a in record.arrays if slurm.any_queued([a])]
    if queued:
        eval_id = jobs.submit_eval(plan, ":".join(queued), res)
        log.warning("study %s: %d/%d finished and array(s) %s still queued: evaluation job %s waits for them",
                    name, done, target, ",".join(queued), eval_id)
        return "waiting"
    fail_orphans(opened, plan.hpc.max_retry)
    if record.resubmits >= plan.hpc.max_resubmits:
        log.warning("study %s: %d/%d finished, no worker left and hpc.max_resubmits=%d reached: evaluating as is",
                    name, done, target, plan.hpc.max_resubmits)
        return "exhausted"
    workers = max(1, min(plan.hpc.workers, target - done))
    array_id = jobs.submit_array(plan, workers)
    record = update_record(opened, lambda r: {"arrays": [*r.arrays, array_id], "resubmits": r.resubmits + 1})
    eval_id = jobs.submit_eval(plan, array_id, res)
    log.warning("study %s: %d/%d finished and no worker left: resubmitted %d worker(s) as array %s "
                "(resubmission %d/%d); evaluation job %s follows them", name, done, target, workers, array_id,
                record.resubmits, plan.hpc.max_resubmits, eval_id)
    print(f"resubmitted array {array_id} ({workers} worker(s)); evaluation job {eval_id} follows it", flush=True)
    return "resubmitted"
