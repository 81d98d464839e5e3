"""Dataset folds and the benchmark's rotation (fold i test, i+1 val, the rest train)."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualseg.config import DataConfig
from dualseg.data.folds import read_folds, require_folds, rotation, write_folds
from dualseg.errors import InputError

FOLDS = {"1": ["a", "b"], "2": ["c"], "3": ["d"], "4": ["e", "f"], "5": ["g"]}


def test_rotation_is_cyclic_and_disjoint() -> None:
    assert rotation(FOLDS, 0) == {"train": ["d", "e", "f", "g"], "val": ["c"], "test": ["a", "b"]}
    last = rotation(FOLDS, 4)
    assert last == {"train": ["c", "d", "e", "f"], "val": ["a", "b"], "test": ["g"]}
    for i in range(5):
        r = rotation(FOLDS, i)
        names = r["train"] + r["val"] + r["test"]
        assert sorted(names) == sorted(t for v in FOLDS.values() for t in v)


def test_read_write_and_missing_folds(tmp_path: Path) -> None:
    cfg = DataConfig(root=str(tmp_path))
    assert read_folds(cfg) is None
    with pytest.raises(InputError, match="hpc.final.folds: all needs a dataset with folds"):
        require_folds(cfg)
    write_folds(tmp_path, FOLDS)
    assert read_folds(cfg) == FOLDS and list(require_folds(cfg)) == ["1", "2", "3", "4", "5"]
    write_folds(tmp_path, {"1": ["a"], "2": ["b"]})
    with pytest.raises(InputError, match="at least 3 non-empty folds"):
        read_folds(cfg)
