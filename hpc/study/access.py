"""Opening a study for a short look or one change: connect, load, read the record, close.

Status, report, healing, evaluation, relaunch and the launcher used to write this open/try/close block
each with its own budget; :func:`open_study` is the one way, and :func:`update_record` the one way to
change what the search records while it runs (under the study lock: healers and relaunches race).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import optuna

from hpc.storage import Database, StorageURL, critical_section, open_database
from hpc.study.record import StudyRecord
from hpc.study.schema import study_id


@dataclass
class OpenStudy:
    db: Database
    study: optuna.Study
    record: StudyRecord

    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.study.get_trials(deepcopy=False)


@contextmanager
def open_study(storage: StorageURL, name: str, *, budget_s: float = 30.0, **options: Any) -> Iterator[OpenStudy]:
    """The study ``name`` (never created here), its record, and the database closed on exit.

    ``options`` go to :func:`hpc.storage.open_database` (heartbeat settings for workers).
    """
    db = open_database(storage, budget_s=budget_s, **options)
    try:
        study = db.load_study(name)
        yield OpenStudy(db, study, StudyRecord.read(study))
    finally:
        db.close()


def update_record(opened: OpenStudy, change: Callable[[StudyRecord], dict[str, Any]],
                  lock_timeout_s: float | None = None) -> StudyRecord:
    """Read-modify-write the record under the study lock; ``change`` returns the attributes to set.

    Two evaluation jobs healing at once, or a relaunch racing one, each see the other's arrays.
    """
    sid, storage = study_id(opened.study), opened.db.storage
    with critical_section(opened.db.engine, opened.db.url, opened.study.study_name, lock_timeout_s or 10.0):
        for key, value in change(StudyRecord.from_attrs(storage.get_study_user_attrs(sid))).items():
            storage.set_study_user_attr(sid, key, value)
        opened.record = StudyRecord.from_attrs(storage.get_study_user_attrs(sid))
    return opened.record
