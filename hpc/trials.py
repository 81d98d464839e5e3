"""Which trial a job runs next, decided by rank 0 in one short, locked transaction; a thin facade.

The counting rule is :func:`hpc.study.decide`; the SQL is :mod:`hpc.study.schema`; failing trials whose
workers are gone is :func:`hpc.study.fail_trials`; the heartbeat is :mod:`hpc.study.heartbeat`. What
stays here is the order: the critical section holds only the decision and the creation of the RUNNING
trial *with its first heartbeat* (one commit: a dropped connection can never leave a RUNNING trial
without one); sampling runs after the lock (the trial is already RUNNING and counted; TPE's
``constant_liar`` keeps concurrent samples apart). A lost commit reply is recognised by the ask token
stored with the trial, so a retried ask never creates a second trial; the same token fences the trial:
only the job holding it may report, checkpoint and tell (a requeued job that adopts its trial takes a
new one). Stale trials (no heartbeat for ``grace_period``) are failed inside the lock and re-queued with
their parameters; the next ask pops them and :func:`hpc.paths.seed_from_retry` hands them the dead
trial's checkpoint.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import optuna
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from hpc.config import HpcConfig
from hpc.final import claim_member
from hpc.paths import seed_from_retry
from hpc.requeue import QueuedVouching
from hpc.search import build_pruner, build_sampler, suggest
from hpc.slurm import SlurmEnv, squeue_states
from hpc.storage import OUTAGE, Database, LockTimeout, call, critical_section, job_storage, open_database
from hpc.study import JOB_ID, REQUEUED_JOB, Counts, Heartbeat, TrialOutcome, allocation_key, decide, fail_trials, schema
from hpc.study.record import StudyRecord
from hpc.submit.resources import worker_job_name

log = logging.getLogger("hpc.trials")
R = TypeVar("R")


@dataclass
class WorkerSpec:
    """Everything a job needs, picklable and free of secrets (the URL carries no password)."""

    config: dict[str, Any]
    storage: str
    study: str
    scratch: str
    hpc_overrides: dict[str, Any] = field(default_factory=dict)
    incarnation: str | None = None  # the scratch folders belong to this study incarnation (hpc.paths)


@dataclass
class Assignment:
    """Rank 0's decision for the whole job, broadcast to every rank."""

    action: Literal["train", "wait", "stop", "requeue"]
    trial_id: int = -1
    number: int = -1
    params: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


class TrialLost(Exception):
    """The trial was finished by someone else (e.g. failed as stale during an outage): drop it."""


class Coordinator:
    """Rank 0's side: the study, the lock and the counting rules."""

    def __init__(self, spec: WorkerSpec, hpc: HpcConfig, db: Database | None = None) -> None:
        self.spec, self.hpc = spec, hpc
        self.url = job_storage(spec.storage)
        self.db = db or open_database(self.url, heartbeat_interval=hpc.heartbeat_interval,
                                      grace_period=hpc.grace_period, max_retry=hpc.max_retry, budget_s=hpc.db_outage_s)
        self.study = self.db.load_study(spec.study, pruner=build_pruner(hpc.pruner))
        self.study_id = schema.study_id(self.study)
        self.final = StudyRecord.read(self.study).final  # a final study (hpc.final): members, never sampled
        if self.final is not None:
            self.study.pruner = optuna.pruners.NopPruner()  # a final run is a result, never pruned
        self.study_dir = Path(spec.scratch) / spec.study
        self.label = SlurmEnv.read().label
        self._vouching = QueuedVouching(self.hpc.heartbeat_interval / 2, max(self.hpc.grace_period,
                                                                             self.hpc.db_outage_s))
        self._adopted = False
        self._owned: dict[int, str] = {}  # trial id -> the ask token this job took it with

    def _retry(self, fn: Callable[[], R], what: str) -> R:
        return call(fn, what, self.hpc.db_outage_s)

    def _read(self, fn: Callable[[Session], R], what: str) -> R:
        """A read-only query in its own short session, retried across outages."""
        def go() -> R:
            with Session(self.db.engine) as s:
                return fn(s)

        return self._retry(go, what)

    # ---- the ask ---------------------------------------------------------------------------
    def next(self, resume_trial_id: int | None, stop_requested: Callable[[], bool] = lambda: False) -> Assignment:
        """The job's next step; a stop requested while asking hands a fresh trial back (never trains it)."""
        if not self._adopted:  # the study, not the pickle, knows what this task trained last
            marked = self._requeued_here()
            if marked is not None and resume_trial_id not in (None, marked):
                log.warning("this task was requeued again after training another trial: continuing storage trial %d "
                            "(its own requeue mark), not %d", marked, resume_trial_id)
            resume_trial_id = marked if marked is not None else resume_trial_id
        self._adopted = True
        if resume_trial_id is not None:
            resumed = self._resume(resume_trial_id)
            if resumed is not None:
                return resumed
        self._keep_queued_alive()
        token, attempts = uuid.uuid4().hex, [0]

        def ask() -> Assignment:
            attempts[0] += 1
            return self._decide(token, retried=attempts[0] > 1)

        while True:
            try:
                job = self._retry(ask, "ask")
                break
            except LockTimeout:
                log.info("study lock busy for %.0f s; asking again", self.hpc.lock_timeout_s)
        if job.action != "train":
            return job
        self._owned[job.trial_id] = token
        if stop_requested():
            self.release(job.trial_id)
            return Assignment("stop", reason="signal received while asking; trial handed back")
        job.params = self._sample(job.trial_id, job.number)
        self._set_attr(job.trial_id, JOB_ID, self.label)
        return job

    def seed(self, job: Assignment) -> None:
        """Hand a retry its predecessor's checkpoint (the caller's heartbeat runs: copies can take minutes)."""
        seed_from_retry(self.study_dir, self._retry(lambda: self.db.storage.get_trial(job.trial_id), "get trial"))

    def _decide(self, token: str, retried: bool) -> Assignment:
        """The decision, in one transaction that holds the study lock for a handful of statements."""
        stale = self._stale()  # read-only, before the lock: usually there is nothing to fail
        with critical_section(self.db.engine, self.url, self.spec.study, self.hpc.lock_timeout_s) as s:
            if retried:  # did the earlier commit go through (its reply was lost)?
                mine = schema.trial_of_token(s, self.study_id, token)
                if mine is not None:
                    return Assignment("train", *mine, reason="new")
            if stale:
                fail_trials(self.db, self.study, self._stale(s), f"had no heartbeat for {self.hpc.grace_period} s",
                            self.hpc.max_retry)
            counts = schema.count_states(s, self.study_id)
            lost = schema.lost_failures(s, self.study_id) if counts.fail else 0
            decision = decide(counts, lost, self.hpc.trials, self.hpc.max_failed)
            if decision.action != "train":
                return Assignment(decision.action, reason=decision.reason)
            trial_id, number, reason = schema.start_trial(s, self.study_id, token, counts)
            return Assignment("train", trial_id, number, reason=reason)

    def _stale(self, s: Session | None = None) -> list[int]:
        """Stale RUNNING trials; none right after a database outage (nobody's heartbeat could get through,
        so every trial looks stale: their workers get one grace period to beat again)."""
        if OUTAGE.recent(self.hpc.grace_period):
            return []
        if s is not None:
            return schema.stale_trials(s, self.study_id, self.hpc.grace_period)
        return self._read(lambda fresh: schema.stale_trials(fresh, self.study_id, self.hpc.grace_period), "stale")

    def _sample(self, trial_id: int, number: int) -> dict[str, Any]:
        """Parameters of the trial: drawn by a sampler seeded for this trial number (fixed ones kept)."""
        if self.final is not None:  # a final study's trial: its member's overrides (hpc.final), nothing drawn
            final, spec = self.final, self.spec
            return self._retry(lambda: claim_member(self.db, spec.study, self.study_id, trial_id, final, spec.config,
                                                    self.hpc.lock_timeout_s), "final member")

        def go() -> dict[str, Any]:
            self.study.sampler = build_sampler(self.hpc, number)
            schema.forget_cached_trials(self.study)
            self.study.sampler.before_trial(self.study, self.db.storage.get_trial(trial_id))
            return suggest(optuna.Trial(self.study, trial_id), self.hpc.specs)

        return dict(self._retry(go, "suggest"))

    def release(self, trial_id: int, why: str = "signal received while asking") -> None:
        """Hand a RUNNING trial back as WAITING, never failed: the next ask takes it (and its checkpoint)."""
        def go() -> None:
            with Session(self.db.engine) as s, s.begin():
                schema.release(s, trial_id)

        self._retry(go, "hand trial back")
        log.warning("%s: trial handed back to the study", why)

    # ---- requeued jobs ---------------------------------------------------------------------
    def _requeued_here(self) -> int | None:
        """The RUNNING trial this array task was training when it was requeued, whichever path requeued it
        (USR2, SIGTERM of preemption or ``scancel``, a node failure): marked before it exited. A stale
        second mark (an earlier requeue's) is cleared, so nobody keeps that trial alive for this task."""
        marked = self._read(lambda s: schema.running_with_attr(s, self.study_id, REQUEUED_JOB), "find requeued trial")
        mine = sorted(tid for tid, job in marked.items() if job == self.label)
        for old in mine[:-1]:
            self._set_attr(old, REQUEUED_JOB, None)
        return mine[-1] if mine else None

    def _resume(self, trial_id: int) -> Assignment | None:
        frozen = self._retry(lambda: self.db.storage.get_trial(trial_id), "get trial")
        if frozen.state != TrialState.RUNNING:
            log.warning("trial %d became %s while this job was requeued; its retry continues it",
                        frozen.number, frozen.state.name)
            return None
        self._beat(trial_id)
        token = uuid.uuid4().hex  # fencing: from now on only this job may report, checkpoint and tell it
        self._retry(lambda: self.db.storage.set_trial_system_attr(trial_id, schema.ASK_TOKEN, token), "own trial")
        self._owned[trial_id] = token
        self._set_attr(trial_id, REQUEUED_JOB, None)
        return Assignment("train", trial_id, frozen.number, self._sample(trial_id, frozen.number), "resumed")

    def _keep_queued_alive(self) -> None:
        """Beat for RUNNING trials whose requeued job still waits in the queue (one batched squeue; the rule
        is :class:`hpc.requeue.QueuedVouching`)."""
        if not self._vouching.due():
            return
        queued = self._read(lambda s: schema.running_with_attr(s, self.study_id, REQUEUED_JOB), "list requeued")
        if not queued:
            return
        states = squeue_states([str(j) for j in queued.values()], names=[worker_job_name(self.spec.study)])
        for trial_id in self._vouching.vouched(queued, states):
            self._beat(trial_id)

    def _beat(self, trial_id: int) -> None:
        self._retry(lambda: self.db.rdb.record_heartbeat(trial_id), "heartbeat")

    def mark_requeued(self, trial_id: int) -> None:
        """Before a requeue: the trial waits in the queue without a heartbeat; live workers keep it beating."""
        self._retry(lambda: self.db.storage.set_trial_user_attr(trial_id, REQUEUED_JOB, self.label), "mark requeued")

    # ---- during and after a trial ----------------------------------------------------------
    def counts(self) -> Counts:
        return self._read(lambda s: schema.count_states(s, self.study_id), "count trials")

    def study_full(self) -> bool:
        return self.counts().finished >= self.hpc.trials

    def report(self, trial_id: int, step: int, value: float) -> bool:
        """Report an epoch's objective; True means prune. :class:`TrialLost` if someone finished the trial."""
        def go() -> bool:
            frozen = self._mine(trial_id)
            if step not in frozen.intermediate_values:
                try:
                    self.db.storage.set_trial_intermediate_value(trial_id, step, value)
                except optuna.exceptions.UpdateFinishedTrialError:
                    raise TrialLost(f"trial {frozen.number} was finished by another worker") from None
                frozen = self.db.storage.get_trial(trial_id)
            return bool(self.study.pruner.prune(self.study, frozen))

        return self._retry(go, "report")

    def _mine(self, trial_id: int) -> optuna.trial.FrozenTrial:
        """The trial, if this job still owns it; :class:`TrialLost` if it was finished or taken over."""
        frozen = self.db.storage.get_trial(trial_id)
        if frozen.state.is_finished():
            raise TrialLost(f"trial {frozen.number} is {frozen.state.name}")
        if frozen.system_attrs.get(schema.ASK_TOKEN) != self._owned.get(trial_id):
            raise TrialLost(f"trial {frozen.number} belongs to another job now")
        return frozen

    def tell(self, trial_id: int, state: TrialState, value: float | None,
             outcome: TrialOutcome | None = None) -> bool:
        """Finish the trial; False (one warning) when someone else finished it or owns it now."""
        try:
            self._retry(lambda: self._mine(trial_id), "check owner")
        except TrialLost as exc:
            log.warning("%s; dropping it", exc)
            return False
        try:
            for key, attr in (outcome or TrialOutcome()).attrs().items():
                self._set_attr(trial_id, key, attr)
            values = None if value is None else [value]
            self._retry(lambda: self.db.storage.set_trial_state_values(trial_id, state, values), "tell")
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial (storage id %d) was already finished by another worker (stale heartbeat during "
                        "an outage?); dropping it", trial_id)
            return False

    def _set_attr(self, trial_id: int, key: str, value: Any) -> None:
        self._retry(lambda: self.db.storage.set_trial_user_attr(trial_id, key, value), "set attribute")

    def record_allocation(self, rank_seconds: float) -> None:
        """This job's allocated rank-seconds so far (one study attribute per job run; summed by the evaluation)."""
        key = allocation_key(self.label, SlurmEnv.read().restart_count)
        self._retry(lambda: self.study.set_user_attr(key, round(rank_seconds, 1)), "record allocation")

    def heartbeat(self, trial_id: int) -> Heartbeat:
        return Heartbeat(self.db, trial_id, self.hpc.heartbeat_interval)
