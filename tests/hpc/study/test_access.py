"""hpc.study.access: open a study for a look; change its record under the lock, racing processes included."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dualseg.errors import InputError
from hpc.storage import StorageURL, create_or_load_study, open_database
from hpc.study import open_study, update_record

CHILD = textwrap.dedent(
    """
    import sys
    from hpc.storage import StorageURL
    from hpc.study import open_study, update_record
    url, me = StorageURL.parse(sys.argv[1]), sys.argv[2]
    for i in range(5):
        with open_study(url, "s") as opened:
            update_record(opened, lambda r: {"arrays": [*r.arrays, f"{me}-{i}"], "resubmits": r.resubmits + 1})
    """
)


def _make(url: str) -> StorageURL:
    parsed = StorageURL.parse(url)
    db = open_database(parsed, create_tables=True)
    create_or_load_study(db, "s", "minimize", {"trials": 3, "arrays": ["1"]})
    db.close()
    return parsed


def test_open_study_reads_the_record_and_closes(tmp_path: Path) -> None:
    url = _make(f"sqlite:///{tmp_path / 's.db'}")
    with open_study(url, "s") as opened:
        assert opened.record.trials == 3 and opened.record.arrays == ["1"] and opened.trials() == []
    with pytest.raises(InputError, match="no study named 'nope'"), open_study(url, "nope"):
        pass


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_racing_updates_lose_nothing(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """Three processes append arrays and count resubmissions at once: every append and count survives."""
    raw = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else request.getfixturevalue("pg_db_url")
    url = _make(raw)
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, raw, f"p{k}"], env={**os.environ,
                              "PYTHONWARNINGS": "ignore"}) for k in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with open_study(url, "s") as opened:
        record = opened.record
        assert update_record(opened, lambda r: {}).arrays == record.arrays
    assert record.resubmits == 15
    assert sorted(record.arrays) == sorted(["1", *(f"p{k}-{i}" for k in range(3) for i in range(5))])
