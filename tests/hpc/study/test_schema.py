"""hpc.study.schema: every query over Optuna's private schema, run for real on SQLite and PostgreSQL.

This is where an Optuna upgrade that changes its tables shows up first.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy.orm import Session

from hpc.storage import Database, StorageURL, create_or_load_study, critical_section, open_database
from hpc.study import JOB_ID, REQUEUED_JOB, Counts, fail_trials, hand_back, schema


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    url = f"sqlite:///{tmp_path / 's.db'}" if request.param == "sqlite" else request.getfixturevalue("pg_db_url")
    database = open_database(StorageURL.parse(url), create_tables=True, heartbeat_interval=1, grace_period=2,
                             max_retry=3)
    create_or_load_study(database, "s", "minimize", {"trials": 4})
    yield database
    database.close()


def _start(db: Database, study: optuna.Study, token: str) -> tuple[int, int, str]:
    sid = schema.study_id(study)
    with critical_section(db.engine, db.url, "s") as s:
        return schema.start_trial(s, sid, token, schema.count_states(s, sid))


def test_start_count_token_release(db: Database) -> None:
    study = db.load_study("s")
    sid = schema.study_id(study)
    tid, number, reason = _start(db, study, "tok-a")
    assert (number, reason) == (0, "new")
    with Session(db.engine) as s:
        assert schema.count_states(s, sid) == Counts(running=1)
        assert schema.trial_of_token(s, sid, "tok-a") == (tid, 0) and schema.trial_of_token(s, sid, "x") is None
        assert schema.stale_trials(s, sid, 60) == []  # created with its first heartbeat
    with Session(db.engine) as s, s.begin():
        schema.release(s, tid)
    assert _start(db, study, "tok-b") == (tid, 0, "handed back")  # popped again, not a new number
    assert _start(db, study, "tok-c")[1:] == (1, "new")


def test_a_retry_pops_without_its_predecessors_run_bookkeeping(db: Database) -> None:
    study = db.load_study("s")
    tid, _, _ = _start(db, study, "t1")
    for key, value in {"job_id": "5_0", "requeued_job": "5_0", "epochs_run": 3}.items():
        db.storage.set_trial_user_attr(tid, key, value)
    db.storage.set_trial_user_attr(tid, "note", "kept")
    with critical_section(db.engine, db.url, "s"):
        assert fail_trials(db, study, [tid], "test", max_retry=3) == [0]
    retry_id, number, reason = _start(db, study, "t2")
    frozen = db.storage.get_trial(retry_id)
    assert (number, reason) == (1, "retry") and frozen.system_attrs["failed_trial"] == 0
    assert frozen.user_attrs == {"note": "kept"}, "a retry inherited the dead run's job id / requeue mark"


def test_lost_failures_count_retry_chains_once(db: Database) -> None:
    """0 fails -> retry 1 fails -> retry 2 runs: nothing is lost. 3 fails with no retry (max_retry): lost."""
    study = db.load_study("s")
    sid = schema.study_id(study)
    first, _, _ = _start(db, study, "a")
    with critical_section(db.engine, db.url, "s"):
        fail_trials(db, study, [first], "test", max_retry=3)
    second, n2, _ = _start(db, study, "b")
    with critical_section(db.engine, db.url, "s"):
        fail_trials(db, study, [second], "test", max_retry=3)
    third, n3, reason = _start(db, study, "c")
    assert (n2, n3, reason) == (1, 2, "retry")
    assert db.storage.get_trial(third).system_attrs["retry_history"] == [0, 1]
    with Session(db.engine) as s:
        assert schema.lost_failures(s, sid) == 0
    lone, _, _ = _start(db, study, "d")
    with critical_section(db.engine, db.url, "s"):
        fail_trials(db, study, [lone], "test", max_retry=0)  # no retry allowed
    with Session(db.engine) as s:
        assert schema.lost_failures(s, sid) == 1
        assert schema.count_states(s, sid) == Counts(running=1, fail=3)


def test_stale_and_attributes(db: Database) -> None:
    study = db.load_study("s")
    sid = schema.study_id(study)
    tid, _, _ = _start(db, study, "a")
    other, _, _ = _start(db, study, "b")
    db.storage.set_trial_user_attr(tid, "requeued_job", "9_1")
    db.storage.set_trial_user_attr(other, "requeued_job", None)  # cleared marks do not count
    with Session(db.engine) as s:
        assert schema.running_with_attr(s, sid, "requeued_job") == {tid: "9_1"}
        assert sorted(schema.running_ids(s, sid)) == sorted([tid, other])
    time.sleep(3.5)  # SQLite's now() has whole seconds: more than 2 s must show as more than 2 s
    db.rdb.record_heartbeat(other)
    with Session(db.engine) as s:
        assert schema.stale_trials(s, sid, 2) == [tid]
    db.storage.set_trial_state_values(tid, TrialState.PRUNED)
    with Session(db.engine) as s:
        assert schema.running_with_attr(s, sid, "requeued_job") == {} and schema.stale_trials(s, sid, 60) == []


def test_hand_back_releases_only_the_trials_of_ended_jobs(db: Database) -> None:
    """A local search stopped by Ctrl-C: the trials its stopped workers held go back WAITING (not FAIL), keep
    their numbers, and lose the stopped job's labels when popped again; a live job's trial is untouched."""
    study = db.load_study("s")
    sid = schema.study_id(study)
    stopped, _, _ = _start(db, study, "tok-a")
    requeued, _, _ = _start(db, study, "tok-b")
    alive, _, _ = _start(db, study, "tok-c")
    db.storage.set_trial_user_attr(stopped, JOB_ID, "local-1")
    db.storage.set_trial_user_attr(requeued, JOB_ID, "local-2")
    db.storage.set_trial_user_attr(requeued, REQUEUED_JOB, "local-2")  # a worker's SIGTERM path marks it
    db.storage.set_trial_user_attr(alive, JOB_ID, "local-3")
    assert hand_back(db, study, lambda job: job in ("local-1", "local-2")) == [0, 1]
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states == {0: TrialState.WAITING, 1: TrialState.WAITING, 2: TrialState.RUNNING}
    assert _start(db, study, "tok-d")[1:] == (0, "handed back")
    assert _start(db, study, "tok-e")[1:] == (1, "handed back")
    with Session(db.engine) as s:
        assert schema.running_jobs(s, sid) == {stopped: "", requeued: "", alive: "local-3"}
