"""Self-healing: when every worker is gone and the study is short of its count, start new workers.

The evaluation job runs ``afterany`` the array, i.e. when no worker of it remains. If the study then
holds fewer finished trials than requested (tasks failed, were cancelled, or hit ``max_num_timeout``),
it fails the RUNNING trials whose jobs are gone (Optuna's retry callback re-queues them with their
parameters and checkpoints), resubmits workers for the remainder — at most ``hpc.max_resubmits``
times per study, and not once ``hpc.max_failed`` trials are lost — and submits a new evaluation job
after them; only a complete (or exhausted) study is evaluated. If some array of the study is still
queued it waits for it (one evaluation job per study waits, never two).

Two evaluation jobs may heal at once (the same study launched twice, both arrays cancelled together)
and a relaunch may race them: healing holds the study's ``heal`` lock, re-reads the record under it,
and a trial is failed only when *its own* job is gone — never on "squeue did not answer".
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Literal

from sqlalchemy.orm import Session

from dualseg.config import Config, from_dict
from dualseg.errors import InputError
from hpc import slurm
from hpc.config import HpcConfig
from hpc.paths import study_scratch
from hpc.storage import PASSFILE_ENV, StorageURL, critical_section, exclusive
from hpc.study import Counts, OpenStudy, StudyRecord, fail_trials, update_record
from hpc.study.schema import lost_failures, running_jobs, study_id
from hpc.submit import jobs
from hpc.submit.jobs import Plan
from hpc.submit.resources import eval_job_name, worker_job_name

log = logging.getLogger("hpc.heal")
Outcome = Literal["complete", "waiting", "resubmitted", "exhausted"]
SQUEUE_PATIENCE_S = 300.0  # how long healing waits for squeue to answer before it gives up (one error line)


def plan_from_record(record: StudyRecord, study_name: str, storage: StorageURL, scratch: Path | None) -> Plan:
    """The launch's plan, rebuilt from what the launcher recorded in the study."""
    cfg = from_dict(Config, record.config or {})
    hpc = from_dict(HpcConfig, {**record.launch, "study": study_name})
    passfile = os.environ.get(PASSFILE_ENV)
    return Plan(cfg, hpc, "slurm", study_scratch(scratch, record.scratch), storage, record.incarnation,
                Path(passfile) if passfile else None)


def study_jobs(study_name: str, patience_s: float = SQUEUE_PATIENCE_S) -> dict[str, str]:
    """``{job: state}`` of the study's workers and evaluation jobs; waits for an answer, then one error line."""
    deadline = time.monotonic() + patience_s
    while (listed := slurm.squeue_listing([worker_job_name(study_name), eval_job_name(study_name)], 0)) is None:
        if time.monotonic() > deadline:
            raise InputError(f"squeue: no answer for {patience_s:.0f} s; cannot tell whether workers of study "
                             f"{study_name!r} still run, so nothing was failed or resubmitted (launch the study "
                             "again once SLURM answers)")
        time.sleep(15)
    return listed


def fail_orphans(opened: OpenStudy, max_retry: int, listed: dict[str, str]) -> int:
    """Fail the RUNNING trials whose job is gone from ``listed`` (not after ``grace_period``) and re-queue them
    with their parameters; returns how many. Under the study lock, like every trial creation."""
    db, study = opened.db, opened.study
    alive = {job for job, state in listed.items() if state in slurm.QUEUED_STATES}
    alive |= {job.split("_")[0] for job in alive}
    with critical_section(db.engine, db.url, study.study_name) as s:
        gone = [tid for tid, job in running_jobs(s, study_id(study)).items() if job not in alive]
        return len(fail_trials(db, study, gone, "was RUNNING but its job is gone", max_retry))


def heal(opened: OpenStudy, storage: StorageURL, scratch: Path | None = None) -> Outcome:
    """One healer per study at a time (the evaluation jobs of two launches may run together)."""
    db, name = opened.db, opened.study.study_name
    with exclusive(db.engine, db.url, f"{name}/heal", timeout_s=600):
        opened.record = update_record(opened, lambda r: {})  # what the healer before us recorded
        return _heal(opened, storage, scratch)


def _heal(opened: OpenStudy, storage: StorageURL, scratch: Path | None) -> Outcome:
    record, name = opened.record, opened.study.study_name
    counts = Counts.of(opened.trials())
    target, done = record.trials, counts.finished
    if done >= target:
        return "complete"
    plan = plan_from_record(record, name, storage, scratch)
    res = jobs.eval_resources(plan, jobs.partition_node(plan))
    listed = study_jobs(name)
    queued = [a for a in record.arrays if any(j.split("_")[0] == a and s in slurm.QUEUED_STATES
                                              for j, s in listed.items())]
    if queued:
        me = slurm.SlurmEnv.read().job_id
        evals = slurm.squeue_listing([eval_job_name(name)], 0) or {}
        waiting = [j for j, s in evals.items() if j != me and s in slurm.WAITING_STATES]
        if waiting:
            log.warning("study %s: %d/%d finished, array(s) %s still queued and evaluation job %s waits for them",
                        name, done, target, ",".join(queued), waiting[0])
            return "waiting"
        eval_id = jobs.submit_eval(plan, ":".join(queued), res)
        log.warning("study %s: %d/%d finished and array(s) %s still queued: evaluation job %s waits for them",
                    name, done, target, ",".join(queued), eval_id)
        return "waiting"
    fail_orphans(opened, plan.hpc.max_retry, listed)
    with Session(opened.db.engine) as s:
        lost = lost_failures(s, study_id(opened.study))
    if lost >= plan.hpc.max_failed or record.resubmits >= plan.hpc.max_resubmits:
        why = (f"{lost} trials failed for good (hpc.max_failed={plan.hpc.max_failed})" if lost >= plan.hpc.max_failed
               else f"hpc.max_resubmits={plan.hpc.max_resubmits} reached")
        log.warning("study %s: %d/%d finished, no worker left and %s: evaluating as is", name, done, target, why)
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
