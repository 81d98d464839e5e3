"""Splits: file parsing, explicit lists, overlap and emptiness errors."""

from __future__ import annotations

import json

import pytest

from dualseg.config import DataConfig
from dualseg.data.splits import read_splits, resolve_splits, write_splits
from dualseg.errors import InputError


def _root(tmp_path, names=("a", "b", "c")):
    for n in names:
        (tmp_path / f"{n}.zarr").mkdir()
    return tmp_path


def test_read_and_resolve(tmp_path):
    root = _root(tmp_path)
    write_splits(root / "splits.json", {"train": ["a", "b"], "val": ["c"]})
    assert read_splits(root / "splits.json") == {"train": ["a", "b"], "val": ["c"], "test": []}
    cfg = DataConfig(root=str(root), val_tiles=["c.zarr"])
    assert resolve_splits(cfg, ("train", "val"))["val"] == ["c"]
    cfg = DataConfig(root=str(root), train_tiles=["a"], val_tiles=["b"], test_tiles=["c"],
                     splits=str(root / "none.json"))
    assert resolve_splits(cfg, ("train", "val", "test"))["test"] == ["c"]


@pytest.mark.parametrize(
    "splits, wanted, message",
    [
        ({"train": ["a", "b"], "val": ["b"]}, ("train", "val"), r"tile b is in both train and val"),
        ({"train": ["a", "a"], "val": ["b"]}, ("train",), r"tile a is twice in train"),
        ({"train": ["a"], "val": []}, ("train", "val"), r"the val tile list is empty"),
        ({"train": ["a", "zz"], "val": ["b"]}, ("train",), r"tile zz \(train\) not found"),
        ({"train": ["a"], "valid": ["b"]}, ("train",), r"unknown split 'valid'"),
        ({"train": "a"}, ("train",), r"train must be a list"),
    ],
)
def test_split_errors(tmp_path, splits, wanted, message):
    root = _root(tmp_path)
    (root / "splits.json").write_text(json.dumps(splits))
    with pytest.raises(InputError, match=message):
        resolve_splits(DataConfig(root=str(root)), wanted)


def test_missing_or_broken_file(tmp_path):
    with pytest.raises(InputError, match="splits: file not found"):
        resolve_splits(DataConfig(root=str(tmp_path)), ("train",))
    (tmp_path / "splits.json").write_text("{oops")
    with pytest.raises(InputError, match="not valid JSON"):
        resolve_splits(DataConfig(root=str(tmp_path)), ("train",))
    with pytest.raises(InputError, match="unknown split 'dev'"):
        resolve_splits(DataConfig(root=str(tmp_path), train_tiles=["a"]), ("dev",))
