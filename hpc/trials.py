"""Which trial a job runs next, decided by rank 0 in one short, locked transaction.

The rule that keeps the count exact: ``finished + running >= trials`` means "wait", never "ask", so
any number of workers asking at once can neither overshoot nor undershoot the requested number of
finished (complete + pruned) trials. The critical section (:func:`hpc.storage.critical_section`)
holds only the decision and the creation of the RUNNING trial *with its first heartbeat* (one
commit: a connection drop can never leave a RUNNING trial without a heartbeat, which Optuna's stale
check would ignore for ever); counts are one aggregate query; sampling runs after the lock is
released (the trial is already RUNNING and counted; TPE's ``constant_liar`` keeps concurrent samples
apart). A lost commit reply is recognised by the ask token stored with the trial, so a retried ask
never creates a second trial. Stale trials (no heartbeat for ``grace_period``) are failed inside the
lock and re-queued as WAITING by Optuna's ``RetryHeartbeatStaleTrialCallback`` with their parameters;
the next ask pops them and :func:`seed_from_retry` hands them the dead trial's checkpoint.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, cast

import optuna
import sqlalchemy as sa
from optuna.storages._rdb import models as M
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from dualseg.io import atomic_copy
from dualseg.train.rundir import CHECKPOINTS, METRICS, has_checkpoint
from hpc.accounting import allocation_key
from hpc.config import HpcConfig
from hpc.paths import trial_dir
from hpc.search import build_pruner, build_sampler, suggest
from hpc.slurm import QUEUED_STATES, SlurmEnv, squeue_states
from hpc.storage import (
    OUTAGE,
    Database,
    LockTimeout,
    call,
    critical_section,
    is_connection_error,
    job_storage,
    open_database,
)

log = logging.getLogger("hpc.trials")
ASK_TOKEN = "dualseg:ask"
T, H, SA, UA = M.TrialModel, M.TrialHeartbeatModel, M.TrialSystemAttributeModel, M.TrialUserAttributeModel


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


def count_states(session: Session, study_id: int) -> dict[str, int]:
    """Trials per state name, one aggregate query."""
    counts = {s.name: 0 for s in TrialState}
    for state, n in session.execute(sa.select(T.state, sa.func.count()).where(T.study_id == study_id)
                                    .group_by(T.state)).all():
        counts[state.name] = int(n)
    return counts


def finished(counts: dict[str, int]) -> int:
    return counts["COMPLETE"] + counts["PRUNED"]


def lost_failures(session: Session, study_id: int) -> int:
    """FAIL trials that no retry continues."""
    failed = set(session.scalars(sa.select(T.number).where(T.study_id == study_id, T.state == TrialState.FAIL)))
    if not failed:
        return 0
    retried = {json.loads(v) for v in session.scalars(
        sa.select(SA.value_json).join(T, SA.trial_id == T.trial_id).where(T.study_id == study_id,
                                                                          SA.key == "failed_trial"))}
    return len(failed - retried)


class Heartbeat:
    """Beats every ``interval`` s in a thread; an unreachable database is waited out, never fatal."""

    def __init__(self, db: Database, trial_id: int, interval: int) -> None:
        self._db, self._trial_id, self._interval = db, trial_id, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):  # the trial was created with its first heartbeat
            try:
                self._db.rdb.record_heartbeat(self._trial_id)
                OUTAGE.recovered()
            except Exception as exc:  # noqa: BLE001 - keep beating; the next beat may get through
                if is_connection_error(exc):
                    OUTAGE.failed("heartbeat", exc, self._db.budget_s)
                else:
                    log.warning("heartbeat failed (%s); retrying", type(exc).__name__)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def seed_from_retry(study_dir: Path, frozen: optuna.trial.FrozenTrial) -> Path | None:
    """Copy the newest checkpoint of the trials this one retries into its own folder."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        history = optuna.storages.RetryHeartbeatStaleTrialCallback.retry_history(frozen)
    target = trial_dir(study_dir, frozen.number)
    if has_checkpoint(target):
        return target
    for number in reversed(history):
        source = trial_dir(study_dir, number)
        if has_checkpoint(source):
            target.mkdir(parents=True, exist_ok=True)
            for name in (*CHECKPOINTS, METRICS):
                if (source / name).exists():
                    atomic_copy(source / name, target / name)
            log.info("trial %d resumes from the checkpoint of failed trial %d", frozen.number, number)
            return source
    return None


class Coordinator:
    """Rank 0's side: the study, the lock and the counting rules."""

    def __init__(self, spec: WorkerSpec, hpc: HpcConfig, db: Database | None = None) -> None:
        self.spec, self.hpc = spec, hpc
        self.url = job_storage(spec.storage)
        self.db = db or open_database(self.url, heartbeat_interval=hpc.heartbeat_interval,
                                      grace_period=hpc.grace_period, max_retry=hpc.max_retry, budget_s=hpc.db_outage_s)
        self.study = self.db.load_study(spec.study, pruner=build_pruner(hpc.pruner))
        self.study_id = self.study._study_id
        self.specs = hpc.specs
        self.study_dir = Path(spec.scratch) / spec.study
        self.label = SlurmEnv.read().label
        self._last_keepalive = 0.0
        self._adopted = False

    def _retry(self, fn: Any, what: str) -> Any:
        return call(fn, what, self.hpc.db_outage_s)

    # ---- the ask ---------------------------------------------------------------------------
    def next(self, resume_trial_id: int | None, stop_requested: Any = lambda: False) -> Assignment:
        """The job's next step; a stop requested while asking hands a fresh trial back (never trains it)."""
        if resume_trial_id is None and not self._adopted:
            resume_trial_id = self._requeued_here()  # SLURM requeued us itself (preemption, node failure)
        self._adopted = True
        if resume_trial_id is not None:
            job = self._resume(resume_trial_id)
            if job is not None:
                return job
        self._keep_queued_alive()
        token, attempts = uuid.uuid4().hex, [0]

        def decide() -> Assignment:
            attempts[0] += 1
            return self._decide(token, retried=attempts[0] > 1)

        while True:
            try:
                job = self._retry(decide, "ask")
                break
            except LockTimeout:
                log.info("study lock busy for %.0f s; asking again", self.hpc.lock_timeout_s)
        if job.action != "train":
            return job
        if stop_requested():
            self.release(job.trial_id)
            return Assignment("stop", reason="signal received while asking; trial handed back")
        job.params = self._sample(job.trial_id, job.number)
        self._retry(lambda: self.db.storage.set_trial_user_attr(job.trial_id, "job_id", self.label), "set job id")
        seed_from_retry(self.study_dir, self._retry(lambda: self.db.storage.get_trial(job.trial_id), "get trial"))
        return job

    def _requeued_here(self) -> int | None:
        """The RUNNING trial this array task was running when SLURM requeued it (marked before it exited)."""
        def go() -> int | None:
            with Session(self.db.engine) as s:
                return s.scalars(sa.select(T.trial_id).join(UA, UA.trial_id == T.trial_id).where(
                    T.study_id == self.study_id, T.state == TrialState.RUNNING, UA.key == "requeued_job",
                    UA.value_json == json.dumps(self.label)).order_by(T.trial_id).limit(1)).first()

        return self._retry(go, "find requeued trial")

    def _resume(self, trial_id: int) -> Assignment | None:
        frozen = self._retry(lambda: self.db.storage.get_trial(trial_id), "get trial")
        if frozen.state != TrialState.RUNNING:
            log.warning("trial %d became %s while this job was requeued; its retry continues it",
                        frozen.number, frozen.state.name)
            return None
        self._retry(lambda: self.db.rdb.record_heartbeat(trial_id), "heartbeat")
        self._retry(lambda: self.db.storage.set_trial_user_attr(trial_id, "requeued_job", None), "clear requeued")
        return Assignment("train", trial_id, frozen.number, self._sample(trial_id, frozen.number), "resumed")

    def _sample(self, trial_id: int, number: int) -> dict[str, Any]:
        """Parameters of the trial: drawn by a sampler seeded for this trial number (fixed ones kept)."""
        def go() -> dict[str, Any]:
            self.study.sampler = build_sampler(self.hpc, number)
            self.study._thread_local.cached_all_trials = None
            self.study.sampler.before_trial(self.study, self.db.storage.get_trial(trial_id))
            return suggest(optuna.Trial(self.study, trial_id), self.specs)

        return dict(self._retry(go, "suggest"))

    def _decide(self, token: str, retried: bool) -> Assignment:
        """The decision, in one transaction that holds the study lock for a handful of statements."""
        stale = self._stale(None)  # read-only, before the lock: usually there is nothing to fail
        with critical_section(self.db.engine, self.url, self.spec.study, self.hpc.lock_timeout_s) as s:
            if retried:  # did the earlier commit go through (its reply was lost)?
                mine = s.execute(sa.select(T.trial_id, T.number).join(SA, SA.trial_id == T.trial_id)
                                 .where(T.study_id == self.study_id, SA.key == ASK_TOKEN,
                                        SA.value_json == json.dumps(token))).first()
                if mine is not None:
                    return Assignment("train", mine.trial_id, mine.number, reason="new")
            if stale:
                self._fail_stale(s)
            counts = count_states(s, self.study_id)
            done, running, target = finished(counts), counts["RUNNING"], self.hpc.trials
            if done >= target:
                return Assignment("stop", reason=f"study has {done}/{target} finished trials")
            lost = lost_failures(s, self.study_id) if counts["FAIL"] else 0
            if lost >= self.hpc.max_failed:
                return Assignment("stop", reason=f"{lost} failed trials (hpc.max_failed={self.hpc.max_failed})")
            if done + running >= target:
                return Assignment("wait", reason=f"{done} finished + {running} running")
            trial_id, number, reason = self._start_trial(s, token, counts)
            return Assignment("train", trial_id, number, reason=reason)

    def _start_trial(self, s: Session, token: str, counts: dict[str, int]) -> tuple[int, int, str]:
        """Pop the oldest WAITING trial (a retry) or create one; RUNNING + heartbeat + token in the same commit.

        Every trial of the study is created under this lock (Optuna's retry callback runs inside it too),
        so the next number is the number of trials: no ``count_past_trials`` round trip.
        """
        trials, now_utc = T.__table__, datetime.now(timezone.utc).replace(tzinfo=None)
        waiting = None
        if counts["WAITING"]:
            waiting = s.execute(sa.select(T.trial_id, T.number).where(
                T.study_id == self.study_id, T.state == TrialState.WAITING).order_by(T.trial_id).limit(1)
                .with_for_update()).first()
        if waiting is not None:
            trial_id, number = int(waiting.trial_id), int(waiting.number)
            s.execute(sa.update(trials).where(trials.c.trial_id == trial_id)
                      .values(state=TrialState.RUNNING, datetime_start=now_utc))
            s.execute(sa.delete(H).where(H.trial_id == trial_id))
            s.execute(sa.delete(SA).where(SA.trial_id == trial_id, SA.key == ASK_TOKEN))
            reason = "retry" if s.execute(sa.select(SA.trial_id).where(
                SA.trial_id == trial_id, SA.key == "failed_trial")).first() else "handed back"
        else:
            number, reason = sum(counts.values()), "new"
            created = s.execute(sa.insert(trials).values(
                study_id=self.study_id, number=number, state=TrialState.RUNNING, datetime_start=now_utc))
            key = cast(sa.CursorResult[Any], created).inserted_primary_key
            assert key is not None
            trial_id = int(key[0])
        s.execute(sa.insert(H.__table__).values(trial_id=trial_id, heartbeat=sa.func.now()))
        s.execute(sa.insert(SA.__table__).values(trial_id=trial_id, key=ASK_TOKEN, value_json=json.dumps(token)))
        return trial_id, number, reason

    def _stale(self, s: Session | None) -> list[int]:
        """RUNNING trials without a heartbeat for ``grace_period`` (or, created without any, started that long ago).

        Not right after a database outage: nobody's heartbeat could get through, so every trial looks
        stale; their workers get one grace period to beat again.
        """
        if OUTAGE.recent(self.hpc.grace_period):
            return []

        def query(sess: Session) -> list[int]:
            now_db = sess.execute(sa.select(sa.func.now())).scalar_one().replace(tzinfo=None)
            now_utc = datetime.now(timezone.utc).replace(tzinfo=None)
            grace = self.hpc.grace_period
            rows = sess.execute(sa.select(T.trial_id, T._datetime_start_utc, H.heartbeat)
                                .outerjoin(H, H.trial_id == T.trial_id)
                                .where(T.study_id == self.study_id, T.state == TrialState.RUNNING)).all()
            return [tid for tid, start, beat in rows
                    if (beat is not None and (now_db - beat).total_seconds() > grace)
                    or (beat is None and start is not None and (now_utc - start).total_seconds() > grace)]

        if s is not None:
            return query(s)
        with Session(self.db.engine) as fresh:
            return query(fresh)

    def _fail_stale(self, s: Session) -> None:
        """Fail the stale trials (checked again under the lock); Optuna's callback re-queues them as WAITING."""
        callback = self.db.rdb.get_heartbeat_stale_trial_callback()
        for tid in self._stale(s):
            if not self.db.storage.set_trial_state_values(tid, TrialState.FAIL):
                continue
            frozen = self.db.storage.get_trial(tid)
            log.warning("trial %d had no heartbeat for %d s: failed%s", frozen.number, self.hpc.grace_period,
                        "; re-queued with its parameters" if callback else "")
            if callback is not None:
                callback(self.study, frozen)

    def _keep_queued_alive(self) -> None:
        """Beat for RUNNING trials whose requeued job still waits in the queue (one batched squeue).

        A requeued job may wait far longer than ``grace_period``; it is not dead, so its trial must not
        be failed and retried. Once its job has left the queue the heartbeat check takes its course.
        """
        if time.monotonic() - self._last_keepalive < max(1.0, self.hpc.heartbeat_interval / 2):
            return
        self._last_keepalive = time.monotonic()

        def waiting() -> dict[int, str]:
            with Session(self.db.engine) as s:
                rows = s.execute(sa.select(T.trial_id, UA.value_json).join(UA, UA.trial_id == T.trial_id)
                                 .where(T.study_id == self.study_id, T.state == TrialState.RUNNING,
                                        UA.key == "requeued_job")).all()
            return {tid: json.loads(v) for tid, v in rows if json.loads(v)}

        queued = self._retry(waiting, "list requeued trials")
        if not queued:
            return
        states = squeue_states(list(queued.values()))
        for trial_id, job in queued.items():
            if states.get(job) in QUEUED_STATES:
                self._retry(lambda t=trial_id: self.db.rdb.record_heartbeat(t), "heartbeat")

    def release(self, trial_id: int) -> None:
        """Hand a RUNNING trial back as WAITING (a signal arrived during the ask): the next ask takes it."""
        def go() -> None:
            with Session(self.db.engine) as s, s.begin():
                s.execute(sa.update(T).where(T.trial_id == trial_id, T.state == TrialState.RUNNING)
                          .values(state=TrialState.WAITING))
                s.execute(sa.delete(SA).where(SA.trial_id == trial_id, SA.key == ASK_TOKEN))

        self._retry(go, "hand trial back")
        log.warning("signal received while asking: trial handed back to the study, not started")

    # ---- during and after a trial ----------------------------------------------------------
    def counts(self) -> dict[str, int]:
        def go() -> dict[str, int]:
            with Session(self.db.engine) as s:
                return count_states(s, self.study_id)

        return dict(self._retry(go, "count trials"))

    def study_full(self) -> bool:
        return finished(self.counts()) >= self.hpc.trials

    def mark_requeued(self, trial_id: int) -> None:
        """Before a requeue: the trial waits in the queue without a heartbeat; live workers keep it beating."""
        self._retry(lambda: self.db.storage.set_trial_user_attr(trial_id, "requeued_job", self.label), "mark requeued")

    def report(self, trial_id: int, step: int, value: float) -> bool:
        """Report an epoch's objective; True means prune. :class:`TrialLost` if someone finished the trial."""
        def go() -> bool:
            frozen = self.db.storage.get_trial(trial_id)
            if frozen.state.is_finished():
                raise TrialLost(f"trial {frozen.number} is {frozen.state.name}")
            if step not in frozen.intermediate_values:
                try:
                    self.db.storage.set_trial_intermediate_value(trial_id, step, value)
                except optuna.exceptions.UpdateFinishedTrialError:
                    raise TrialLost(f"trial {frozen.number} was finished by another worker") from None
                frozen = self.db.storage.get_trial(trial_id)
            return bool(self.study.pruner.prune(self.study, frozen))

        return bool(self._retry(go, "report"))

    def tell(self, trial_id: int, state: TrialState, value: float | None, attrs: dict[str, Any]) -> bool:
        """Finish the trial; False (one warning) when someone else already finished it."""
        try:
            for k, v in attrs.items():
                self._retry(lambda k=k, v=v: self.db.storage.set_trial_user_attr(trial_id, k, v), "set attribute")
            values = None if value is None else [value]
            self._retry(lambda: self.db.storage.set_trial_state_values(trial_id, state, values), "tell")
            return True
        except optuna.exceptions.UpdateFinishedTrialError:
            log.warning("trial (storage id %d) was already finished by another worker (stale heartbeat during "
                        "an outage?); dropping it", trial_id)
            return False

    def record_allocation(self, rank_seconds: float) -> None:
        """This job's allocated rank-seconds so far (one study attribute per job run; summed by the evaluation)."""
        key = allocation_key(self.label, SlurmEnv.read().restart_count)
        self._retry(lambda: self.study.set_user_attr(key, round(rank_seconds, 1)), "record allocation")

    def heartbeat(self, trial_id: int) -> Heartbeat:
        return Heartbeat(self.db, trial_id, self.hpc.heartbeat_interval)
