"""hpc.study.record: the typed study and trial records round-trip through a real study."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from dualseg.errors import InputError
from hpc.storage import StorageURL, create_or_load_study, open_database
from hpc.study import RECORD_VERSION, StudyRecord, TrialOutcome, TrialRecord, allocation_key
from hpc.study.record import PLAIN_RECORD_VERSION


def test_study_record_round_trips_through_optuna(tmp_path: Path) -> None:
    db = open_database(StorageURL.parse(f"sqlite:///{tmp_path / 's.db'}"), create_tables=True)
    record = StudyRecord(config={"train": {"epochs": 2}}, trials=7, scratch="/scratch/me", objective="val_miou",
                         code_version="abc", incarnation="f00", launch={"nodes": 2, "gpus_per_node": 4})
    study = create_or_load_study(db, "s", "maximize", record.launch_attrs())
    study.set_user_attr(allocation_key("12_3", 1), 40.0)
    back = StudyRecord.read(optuna.load_study(study_name="s", storage=db.storage))
    assert back == StudyRecord(**{**record.__dict__, "allocations": {"alloc:12_3:1": 40.0},
                                  "record_version": PLAIN_RECORD_VERSION})
    assert back.world_size == 8 and back.record_version == PLAIN_RECORD_VERSION < RECORD_VERSION
    db.close()


def test_older_and_partial_records_read_with_defaults() -> None:
    r = StudyRecord.from_attrs({"trials": "3", "arrays": [81234]})  # written before the record existed
    assert (r.trials, r.arrays, r.resubmits, r.objective, r.config) == (3, ["81234"], 0, "val_loss", None)


def test_a_newer_record_is_refused_not_misread() -> None:
    with pytest.raises(InputError, match="newer dualseg"):
        StudyRecord.from_attrs({"record_version": RECORD_VERSION + 1})


def test_trial_record_and_outcome() -> None:
    outcome = TrialOutcome(best_epoch=3, monitor="val_loss", epochs_run=4, stopped="completed", busy_s=12.5)
    t = optuna.create_trial(value=1.0, user_attrs={**outcome.attrs(), "job_id": "7_1", "requeued_job": None},
                            system_attrs={"failed_trial": 2})
    r = TrialRecord.of(t)
    assert (r.best_epoch, r.busy_s, r.job, r.retry_of, r.error) == (3, 12.5, "7_1", 2, None)
    assert TrialRecord.of(optuna.create_trial(value=1.0, user_attrs={"job_id": "7_1", "requeued_job": "7_1"})).job \
        == "7_1"
    assert "error" not in outcome.attrs()  # nothing unset is written
