"""Folds of a dataset: ``<root>/folds.json`` = ``{"1": [tile, ...], "2": [...], ...}`` and the benchmark's rotation.

PASTIS-R's published numbers are the mean over five fold rotations (fold *i* test, fold *i+1* val, the rest
train); a dataset that records its folds here can be scored the same way (``hpc.final.folds: all``). A
dataset without the file has no folds: asking for fold rotations on it is an error, never a guess.
"""

from __future__ import annotations

import json
from pathlib import Path

from dualseg.config import DataConfig
from dualseg.errors import InputError
from dualseg.io import atomic_write_text, read_json

FOLDS = "folds.json"


def folds_path(cfg: DataConfig) -> Path:
    return Path(cfg.root) / FOLDS


def read_folds(cfg: DataConfig) -> dict[str, list[str]] | None:
    """The dataset's folds in their recorded order, or None when it records none."""
    path = folds_path(cfg)
    if not path.is_file():
        return None
    raw = read_json(path, "folds")
    if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                            for v in raw.values()):
        raise InputError(f"folds: {path}: expected an object of fold name -> list of tile names")
    folds = {str(k): [n.removesuffix(".zarr") for n in v] for k, v in raw.items() if v}
    if len(folds) < 3:
        raise InputError(f"folds: {path}: a rotation needs at least 3 non-empty folds (test, val, train); "
                         f"got {len(folds)}")
    return folds


def write_folds(root: str | Path, folds: dict[str, list[str]]) -> Path:
    return atomic_write_text(Path(root) / FOLDS, json.dumps({str(k): list(v) for k, v in folds.items()},
                                                            indent=1) + "\n")


def rotation(folds: dict[str, list[str]], i: int) -> dict[str, list[str]]:
    """Rotation ``i`` (0-based): fold i test, fold i+1 val (cyclic), every other fold train."""
    names = list(folds)
    test, val = names[i % len(names)], names[(i + 1) % len(names)]
    train = [t for n in names if n not in (test, val) for t in folds[n]]
    return {"train": train, "val": list(folds[val]), "test": list(folds[test])}


def require_folds(cfg: DataConfig) -> dict[str, list[str]]:
    folds = read_folds(cfg)
    if folds is None:
        raise InputError(f"hpc.final.folds: all needs a dataset with folds, and {cfg.root} has none "
                         f"(no {FOLDS}; the PASTIS-R importer writes it); use folds: none")
    return folds
