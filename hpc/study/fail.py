"""Trials whose workers are gone: failing them (one function for the ask's stale heartbeats and the
healing, so both re-queue alike) or, when the workers were stopped on purpose, handing them back.

A failed trial is re-queued as WAITING with its parameters and intermediate values by Optuna's
``RetryHeartbeatStaleTrialCallback`` (at most ``max_retry`` retries per chain); the next ask pops it and
:func:`hpc.trials.seed_from_retry` hands it the dead trial's checkpoint. The caller holds the study lock
(:func:`hpc.storage.critical_section`): every trial of a study is created under it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import optuna
from optuna.trial import TrialState

from hpc.storage import Database, critical_section
from hpc.study import schema

log = logging.getLogger("hpc.study")


def retry_callback(max_retry: int | None) -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry, inherit_intermediate_values=True)


def fail_trials(db: Database, study: optuna.Study, trial_ids: Iterable[int], why: str,
                max_retry: int | None) -> list[int]:
    """Fail the RUNNING trials among ``trial_ids`` and re-queue each; returns the numbers failed.

    A trial finished meanwhile by its own worker (``tell`` takes no lock) is left as it is.
    """
    callback = retry_callback(max_retry)
    failed = []
    for tid in trial_ids:
        try:
            if not db.storage.set_trial_state_values(tid, TrialState.FAIL):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        frozen = db.storage.get_trial(tid)
        retried = max_retry is None or len(optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)) \
            < max_retry
        log.warning("trial %d %s: failed%s", frozen.number, why,
                    "; re-queued with its parameters" if retried else f" (hpc.max_retry={max_retry} reached)")
        callback(study, frozen)
        failed.append(frozen.number)
    return failed


def hand_back(db: Database, study: optuna.Study, gone: Callable[[str], bool]) -> list[int]:
    """Hand back every RUNNING trial whose job (its ``requeued_job``, else ``job_id``) ``gone`` says has ended:
    WAITING, not failed, so the next ask continues it from its checkpoint (a local search stopped by Ctrl-C,
    whose workers saved and exited). Under the study lock; returns the trial numbers."""
    numbers = []
    with critical_section(db.engine, db.url, study.study_name) as s:
        for tid, job in schema.running_jobs(s, schema.study_id(study)).items():
            if gone(job):
                numbers.append(schema.trial_number(s, tid))
                schema.release(s, tid)
    for n in numbers:
        log.info("trial %d: its worker was stopped; handed back to the study", n)
    return sorted(numbers)
