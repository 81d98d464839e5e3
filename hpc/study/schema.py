"""Our own SQL over Optuna's RDB schema: the one module of ``hpc/`` that touches Optuna's private parts.

Optuna's public API has no "create a RUNNING trial with its heartbeat in one commit", no aggregate
count by state, and no cheap "which RUNNING trial carries this attribute"; the exact-count ask needs all
three inside one short locked transaction (:mod:`hpc.trials`). Everything that depends on
``optuna.storages._rdb.models``, ``Study._study_id`` or the study's per-thread trial cache is here, so
an Optuna upgrade is checked in one place (tests/hpc/study/test_schema.py runs every query).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import fields
from datetime import datetime, timezone
from typing import Any, cast

import optuna
import sqlalchemy as sa
from optuna.storages._rdb import models as M
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from hpc.study.counts import Counts
from hpc.study.record import JOB_ID, REQUEUED_JOB, RETRY_OF, TrialOutcome

T, H, SA, UA = M.TrialModel, M.TrialHeartbeatModel, M.TrialSystemAttributeModel, M.TrialUserAttributeModel
ASK_TOKEN = "dualseg:ask"  # system attribute: the ask that created/popped the trial (lost-reply detection)
RETRY_HISTORY = "retry_history"  # Optuna's retry callback: every trial number of the chain before this one
# A retry copies its predecessor's user attributes; these belong to the predecessor's run, not the retry.
RUN_KEYS = (JOB_ID, REQUEUED_JOB, *(f.name for f in fields(TrialOutcome)))


def study_id(study: optuna.Study) -> int:
    return int(study._study_id)


def forget_cached_trials(study: optuna.Study) -> None:
    """Drop the study's per-thread trial cache, so a sampler sees trials created by other jobs."""
    study._thread_local.cached_all_trials = None


def count_states(s: Session, sid: int) -> Counts:
    """Trials per state, one aggregate query."""
    rows = s.execute(sa.select(T.state, sa.func.count()).where(T.study_id == sid).group_by(T.state)).all()
    return Counts.from_states({state: int(n) for state, n in rows})


def lost_failures(s: Session, sid: int) -> int:
    """FAIL trials that no retry continues (a retry of a retry continues every trial of its chain)."""
    failed = set(s.scalars(sa.select(T.number).where(T.study_id == sid, T.state == TrialState.FAIL)))
    if not failed:
        return 0
    continued: set[int] = set()
    for value in s.scalars(sa.select(SA.value_json).join(T, SA.trial_id == T.trial_id)
                           .where(T.study_id == sid, SA.key == RETRY_HISTORY)):
        continued.update(int(n) for n in json.loads(value))
    return len(failed - continued)


def trial_of_token(s: Session, sid: int, token: str) -> tuple[int, int] | None:
    """(trial id, number) of the trial an ask with ``token`` committed, if it did."""
    row = s.execute(sa.select(T.trial_id, T.number).join(SA, SA.trial_id == T.trial_id)
                    .where(T.study_id == sid, SA.key == ASK_TOKEN, SA.value_json == json.dumps(token))).first()
    return None if row is None else (int(row.trial_id), int(row.number))


def start_trial(s: Session, sid: int, token: str, counts: Counts) -> tuple[int, int, str]:
    """Pop the oldest WAITING trial (a retry or a hand-back) or create one: RUNNING, first heartbeat and
    ask token in the caller's transaction. Returns (trial id, number, reason).

    Every trial of the study is created under the study lock (Optuna's retry callback runs inside it
    too), so the next number is the number of trials: no ``count_past_trials`` round trip.
    """
    trials, now_utc = T.__table__, datetime.now(timezone.utc).replace(tzinfo=None)
    waiting = None
    if counts.waiting:
        waiting = s.execute(sa.select(T.trial_id, T.number).where(T.study_id == sid, T.state == TrialState.WAITING)
                            .order_by(T.trial_id).limit(1).with_for_update()).first()
    if waiting is not None:
        trial_id, number = int(waiting.trial_id), int(waiting.number)
        s.execute(sa.update(trials).where(trials.c.trial_id == trial_id)
                  .values(state=TrialState.RUNNING, datetime_start=now_utc))
        s.execute(sa.delete(H).where(H.trial_id == trial_id))
        s.execute(sa.delete(SA).where(SA.trial_id == trial_id, SA.key == ASK_TOKEN))
        s.execute(sa.delete(UA).where(UA.trial_id == trial_id, UA.key.in_(RUN_KEYS)))
        retry = s.execute(sa.select(SA.trial_id).where(SA.trial_id == trial_id, SA.key == RETRY_OF)).first()
        reason = "retry" if retry else "handed back"
    else:
        number, reason = counts.total, "new"
        created = s.execute(sa.insert(trials).values(study_id=sid, number=number, state=TrialState.RUNNING,
                                                     datetime_start=now_utc))
        key = cast(sa.CursorResult[Any], created).inserted_primary_key
        assert key is not None
        trial_id = int(key[0])
    s.execute(sa.insert(H.__table__).values(trial_id=trial_id, heartbeat=sa.func.now()))
    s.execute(sa.insert(SA.__table__).values(trial_id=trial_id, key=ASK_TOKEN, value_json=json.dumps(token)))
    return trial_id, number, reason


def release(s: Session, trial_id: int) -> None:
    """Hand a RUNNING trial back as WAITING (never trained): the next ask pops it."""
    s.execute(sa.update(T).where(T.trial_id == trial_id, T.state == TrialState.RUNNING)
              .values(state=TrialState.WAITING))
    s.execute(sa.delete(SA).where(SA.trial_id == trial_id, SA.key == ASK_TOKEN))


def trial_number(s: Session, trial_id: int) -> int:
    return int(s.execute(sa.select(T.number).where(T.trial_id == trial_id)).scalar_one())


def stale_trials(s: Session, sid: int, grace_s: float) -> list[int]:
    """RUNNING trials without a heartbeat for ``grace_s`` (or, created without any, started that long ago).

    Heartbeats are compared with the database's own clock (Optuna writes them with ``now()``), start
    times with UTC (Optuna stores them as naive UTC).
    """
    now_db = s.execute(sa.select(sa.func.now())).scalar_one().replace(tzinfo=None)
    now_utc = datetime.now(timezone.utc).replace(tzinfo=None)
    rows = s.execute(sa.select(T.trial_id, T._datetime_start_utc, H.heartbeat).outerjoin(H, H.trial_id == T.trial_id)
                     .where(T.study_id == sid, T.state == TrialState.RUNNING)).all()
    return [int(tid) for tid, start, beat in rows
            if (beat is not None and (now_db - beat).total_seconds() > grace_s)
            or (beat is None and start is not None and (now_utc - start).total_seconds() > grace_s)]


def running_with_attr(s: Session, sid: int, key: str) -> dict[int, Any]:
    """RUNNING trials carrying user attribute ``key`` (non-null), with its value."""
    rows = s.execute(sa.select(T.trial_id, UA.value_json).join(UA, UA.trial_id == T.trial_id)
                     .where(T.study_id == sid, T.state == TrialState.RUNNING, UA.key == key)
                     .order_by(T.trial_id)).all()
    values = {int(tid): json.loads(v) for tid, v in rows}
    return {tid: v for tid, v in values.items() if v is not None}


def running_ids(s: Session, sid: int) -> Iterable[int]:
    return [int(t) for t in s.scalars(sa.select(T.trial_id).where(T.study_id == sid, T.state == TrialState.RUNNING))]


def running_jobs(s: Session, sid: int) -> dict[int, str]:
    """RUNNING trials and the job that owns each (the requeued one if marked; "" when none was recorded)."""
    jobs, requeued = running_with_attr(s, sid, JOB_ID), running_with_attr(s, sid, REQUEUED_JOB)
    return {tid: str(requeued.get(tid) or jobs.get(tid) or "") for tid in running_ids(s, sid)}
