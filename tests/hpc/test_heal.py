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
    assert fail_orphans(opened, max_retry=2) == 1
    assert fail_orphans(opened, max_retry=2) == 0  # nothing RUNNING any more
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE", "WAITING"]
    retry = trials[2]
    assert retry.params == {"train.lr": lr} and retry.system_attrs["failed_trial"] == 0
    assert retry.intermediate_values == {0: 0.5}  # inherited: the pruner sees its history
    assert optuna.load_study(study_name="h", storage=pg_db_url).user_attrs["arrays"] == ["999999"]
    db.close()
