"""hpc.trials: the exact count, stale trials and orphans, lost commit replies, hand-backs, seeding.

Several OS processes race through the real Coordinator on SQLite and PostgreSQL, with a short sleep
standing in for training, so the race window is exercised many times in a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa

from dualseg.config import Config, to_dict
from hpc.config import parse_hpc
from hpc.storage import StorageURL, create_or_load_study, open_database
from hpc.trials import Coordinator, WorkerSpec

SEARCH = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}

CHILD = textwrap.dedent(
    """
    import os, sys, time, json
    from optuna.trial import TrialState
    from dualseg.config import Config, to_dict
    from hpc.config import parse_hpc
    from hpc.trials import Coordinator, WorkerSpec
    url, study, scratch, hpc_json, die = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5] == "1"
    cfg = Config(hpc=json.loads(hpc_json))
    coord = Coordinator(WorkerSpec(to_dict(cfg), url, study, scratch), parse_hpc(cfg))
    while True:
        job = coord.next(None)
        if job.action == "stop":
            break
        if job.action == "wait":
            time.sleep(0.2)
            continue
        if die:  # a hard crash after asking: the trial stays RUNNING, no heartbeat any more
            os._exit(9)
        with coord.heartbeat(job.trial_id):
            time.sleep(0.2)
        coord.tell(job.trial_id, TrialState.COMPLETE, float(job.number))
    """
)


def _race(url: str, tmp_path: Path, n_procs: int, trials: int, die: list[bool]) -> optuna.Study:
    hpc = {"trials": trials, "heartbeat_interval": 1, "grace_period": 3, "poll_interval": 0.2, "search": SEARCH,
           "study": "race"}
    create_or_load_study(open_database(StorageURL.parse(url), create_tables=True), "race", "minimize",
                         {"trials": trials})
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, url, "race", str(tmp_path), json.dumps(hpc),
                               "1" if die[i] else "0"], env={**os.environ, "PYTHONWARNINGS": "ignore"})
             for i in range(n_procs)]
    for p in procs:
        p.wait(timeout=120)
    assert [p.returncode for p in procs] == [9 if d else 0 for d in die]
    return optuna.load_study(study_name="race", storage=url)


def _finished(study: optuna.Study) -> int:
    return sum(t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED) for t in study.trials)


def test_concurrent_workers_reach_exactly_the_requested_count_sqlite(tmp_path: Path) -> None:
    study = _race(f"sqlite:///{tmp_path / 'study.db'}", tmp_path, n_procs=4, trials=7, die=[False] * 4)
    assert _finished(study) == 7 and len(study.trials) == 7


@pytest.mark.postgres
def test_concurrent_workers_exact_count_and_crash_retry_postgres(pg_db_url: str, tmp_path: Path) -> None:
    """4 workers, one dies right after asking: its RUNNING trial goes stale, is failed and retried."""
    study = _race(pg_db_url, tmp_path, n_procs=4, trials=6, die=[True, False, False, False])
    states = [t.state.name for t in study.trials]
    assert _finished(study) == 6, states
    assert states.count("FAIL") == 1 and states.count("RUNNING") == 0
    failed = next(t for t in study.trials if t.state.name == "FAIL")
    retry = [t for t in study.trials if t.system_attrs.get("failed_trial") == failed.number]
    assert len(retry) == 1 and retry[0].state.name == "COMPLETE" and retry[0].params == failed.params


def test_retry_copies_the_failed_trials_checkpoint(tmp_path: Path) -> None:
    from hpc.paths import seed_from_retry

    (tmp_path / "trial-3").mkdir()
    (tmp_path / "trial-3" / "last.pt").write_bytes(b"epoch-2-state")
    (tmp_path / "trial-3" / "metrics.jsonl").write_text('{"epoch": 0}\n')
    frozen = optuna.create_trial(state=optuna.trial.TrialState.WAITING,
                                 system_attrs={"failed_trial": 1, "retry_history": [1, 3]})
    frozen.number = 5
    assert seed_from_retry(tmp_path, frozen) == tmp_path / "trial-3"
    assert (tmp_path / "trial-5" / "last.pt").read_bytes() == b"epoch-2-state"
    assert (tmp_path / "trial-5" / "metrics.jsonl").read_text() == '{"epoch": 0}\n'
    assert seed_from_retry(tmp_path, frozen) == tmp_path / "trial-5"  # its own checkpoint now wins




def _coordinator(url: str, tmp_path: Path, **hpc: object) -> Coordinator:
    settings = {"trials": 4, "heartbeat_interval": 1, "grace_period": 2, "poll_interval": 0.2, "search": SEARCH,
                "study": "s", "seed": 7, **hpc}
    cfg = Config(hpc=settings)
    if not (tmp_path / "made").exists():
        create_or_load_study(open_database(StorageURL.parse(url), create_tables=True), "s", "minimize",
                             {"trials": settings["trials"]})
        tmp_path.mkdir(parents=True, exist_ok=True)
        (tmp_path / "made").touch()
    return Coordinator(WorkerSpec(to_dict(cfg), url, "s", str(tmp_path)), parse_hpc(cfg))


def _run_one_worker(url: str, tmp_path: Path) -> list[float]:
    coord = _coordinator(url, tmp_path)
    lrs = []
    while (job := coord.next(None)).action == "train":
        lrs.append(job.params["train.lr"])
        coord.tell(job.trial_id, optuna.trial.TrialState.COMPLETE, job.params["train.lr"])
    assert job.action == "stop"
    return lrs


def test_same_seed_same_parameter_sequence_and_no_replay(tmp_path: Path) -> None:
    a = _run_one_worker(f"sqlite:///{tmp_path / 'a.db'}", tmp_path / "a")
    b = _run_one_worker(f"sqlite:///{tmp_path / 'b.db'}", tmp_path / "b")
    assert a == b and len(a) == 4
    assert len(set(a)) == 4, "a trial drew the parameters of an earlier one"


def test_a_requeued_job_never_replays_earlier_draws(tmp_path: Path) -> None:
    """Two coordinators built like a job and its requeued copy (same seed, same array task) draw anew."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = _coordinator(url, tmp_path, trials=6)
    job = first.next(None)
    first.tell(job.trial_id, optuna.trial.TrialState.COMPLETE, 1.0)
    again = _coordinator(url, tmp_path, trials=6)  # the "requeued job": new process, same settings
    job2 = again.next(None)
    assert job2.number == 1 and job2.params != job.params


def test_lost_commit_reply_does_not_create_a_second_trial(tmp_path: Path) -> None:
    coord = _coordinator(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    a = coord._decide("token-1", retried=False)
    b = coord._decide("token-1", retried=True)  # the retry after a commit whose reply never came
    assert (a.action, b.action) == ("train", "train") and a.trial_id == b.trial_id
    assert coord.counts().running == 1


def test_signal_during_the_ask_hands_the_trial_back(tmp_path: Path) -> None:
    coord = _coordinator(f"sqlite:///{tmp_path / 's.db'}", tmp_path)
    job = coord.next(None, stop_requested=lambda: True)
    assert job.action == "stop" and coord.counts().waiting == 1 and coord.counts().running == 0
    job = coord.next(None)
    assert job.action == "train" and job.number == 0 and job.reason == "handed back"


def test_orphan_without_heartbeat_row_is_failed_and_retried(tmp_path: Path) -> None:
    """A RUNNING trial created without a heartbeat (older code, or Optuna used directly) must not block."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    coord = _coordinator(url, tmp_path, trials=1)
    orphan = coord.study.ask()  # plain Optuna: RUNNING, no heartbeat row
    orphan.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # started long ago
        conn.execute(sa.text("UPDATE trials SET datetime_start = :t WHERE trial_id = :i"),
                     {"t": datetime.now(timezone.utc).replace(tzinfo=None) - timedelta(seconds=30),
                      "i": orphan._trial_id})
    job = coord.next(None)
    assert job.action == "train" and job.reason == "retry" and job.params == orphan.params
    states = [t.state.name for t in coord.study.get_trials()]
    assert states == ["FAIL", "RUNNING"]


@pytest.mark.postgres
def test_tell_on_a_trial_someone_else_failed_drops_it(pg_db_url: str, tmp_path: Path) -> None:
    coord = _coordinator(pg_db_url, tmp_path)
    job = coord.next(None)
    coord.db.storage.set_trial_state_values(job.trial_id, optuna.trial.TrialState.FAIL)
    from hpc.trials import TrialLost

    with pytest.raises(TrialLost):
        coord.report(job.trial_id, 0, 0.5)
    assert coord.tell(job.trial_id, optuna.trial.TrialState.COMPLETE, 0.5) is False
    coord.db.close()


def test_a_trial_taken_over_by_another_job_is_fenced_off(tmp_path: Path) -> None:
    """Job A holds trial 0; job B adopts it (as a requeued job does): A may neither report nor tell any more."""
    from hpc.trials import TrialLost

    url = f"sqlite:///{tmp_path / 's.db'}"
    a = _coordinator(url, tmp_path)
    job = a.next(None)
    assert a.report(job.trial_id, 0, 0.9) is False  # A owns it
    b = _coordinator(url, tmp_path)
    again = b.next(job.trial_id)  # B continues the same trial (its requeue target)
    assert (again.action, again.trial_id, again.reason) == ("train", job.trial_id, "resumed")
    with pytest.raises(TrialLost, match="belongs to another job"):
        a.report(job.trial_id, 1, 0.8)
    assert a.tell(job.trial_id, optuna.trial.TrialState.COMPLETE, 0.8) is False
    assert b.report(job.trial_id, 1, 0.7) is False and b.tell(job.trial_id, optuna.trial.TrialState.COMPLETE, 0.7)
    trial = b.study.get_trials()[0]
    assert trial.state.name == "COMPLETE" and trial.intermediate_values == {0: 0.9, 1: 0.7}


@pytest.mark.postgres
def test_tell_records_the_objective_not_an_outcome_attribute(pg_db_url: str, tmp_path: Path) -> None:
    """The outcome's attributes are written first; the trial's value is still the objective it was told
    (a loop variable named ``value`` once made it ``busy_s`` — or ``fatal=False``, refused by PostgreSQL)."""
    from hpc.study import TrialOutcome

    coord = _coordinator(pg_db_url, tmp_path)
    done, failed = coord.next(None), coord.next(None)
    assert coord.tell(done.trial_id, optuna.trial.TrialState.COMPLETE, 0.25, TrialOutcome(epochs_run=2, busy_s=7.5))
    assert coord.tell(failed.trial_id, optuna.trial.TrialState.FAIL, None, TrialOutcome(error="boom", fatal=False))
    by_id = {t._trial_id: t for t in coord.study.get_trials()}
    assert by_id[done.trial_id].value == 0.25 and by_id[done.trial_id].user_attrs["busy_s"] == 7.5
    assert by_id[failed.trial_id].state.name == "FAIL" and by_id[failed.trial_id].user_attrs["fatal"] is False
    coord.db.close()
