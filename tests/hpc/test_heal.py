"""hpc.heal: orphaned RUNNING trials (no worker left) are failed at once and re-queued with their parameters."""

from __future__ import annotations

import optuna
import pytest

from hpc.heal import fail_orphans
from hpc.storage import StorageURL, create_or_load_study, open_database
from hpc.study import OpenStudy, StudyRecord


@pytest.mark.postgres
def test_orphans_are_requeued_with_their_parameters(pg_db_url: str) -> None:
    url = StorageURL.parse(pg_db_url)
    db = open_database(url, create_tables=True)
    study = create_or_load_study(db, "h", "minimize", {"trials": 2, "arrays": ["999999"]})
    orphan = study.ask()
    lr = orphan.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    orphan.report(0.5, 0)
    done = study.ask()
    done.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    study.tell(done, 0.3)
    opened = OpenStudy(db, study, StudyRecord.read(study))
    assert fail_orphans(opened, max_retry=2, listed={"999998_0": "RUNNING"}) == 1  # its job is not listed
    assert fail_orphans(opened, max_retry=2, listed={}) == 0  # nothing RUNNING any more
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "WAITING"]
    retry = trials[2]
    assert retry.params == {"train.lr": lr} and retry.system_attrs["failed_trial"] == 0
    assert retry.intermediate_values == {0: 0.5}  # inherited: the pruner sees its history
    assert optuna.load_study(study_name="h", storage=pg_db_url).user_attrs["arrays"] == ["999999"]
    db.close()


@pytest.mark.postgres
def test_a_trial_whose_job_still_lives_is_never_failed(pg_db_url: str) -> None:
    """The same study launched twice: the first array is gone, the second still trains its trial."""
    url = StorageURL.parse(pg_db_url)
    db = open_database(url, create_tables=True)
    study = create_or_load_study(db, "h", "minimize", {"trials": 3, "arrays": ["500", "600"]})
    live, dead, unknown = study.ask(), study.ask(), study.ask()
    db.storage.set_trial_user_attr(live._trial_id, "job_id", "600_1")
    db.storage.set_trial_user_attr(dead._trial_id, "job_id", "500_0")
    db.storage.set_trial_user_attr(unknown._trial_id, "job_id", "600_0")
    db.storage.set_trial_user_attr(unknown._trial_id, "requeued_job", "600_2")  # requeued: that job owns it now
    opened = OpenStudy(db, study, StudyRecord.read(study))
    listed = {"600_1": "RUNNING", "600_2": "PENDING", "600_0": "COMPLETING"}
    assert fail_orphans(opened, max_retry=2, listed=listed) == 1
    assert [t.state.name for t in study.get_trials()[:3]] == ["RUNNING", "FAIL", "RUNNING"]
    db.close()
