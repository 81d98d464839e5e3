"""Train/val/test tile lists: ``<root>/splits.json`` or explicit config lists, checked for overlap.

A tile in two splits silently leaks training data into validation scores, so any overlap is an
error naming the tile; so is an empty list or a listed tile that does not exist on disk.
"""

from __future__ import annotations

import json
from pathlib import Path

from dualseg.config import DataConfig
from dualseg.errors import InputError
from dualseg.io import atomic_write_text, read_json

SPLITS = ("train", "val", "test")


def splits_path(cfg: DataConfig) -> Path:
    """The splits file of ``cfg`` (``data.splits`` or ``<root>/splits.json``)."""
    return Path(cfg.splits) if cfg.splits else Path(cfg.root) / "splits.json"


def read_splits(path: str | Path) -> dict[str, list[str]]:
    """Parse a splits JSON ``{"train": [...], "val": [...], "test": [...]}`` (missing keys = empty)."""
    path = Path(path)
    raw = read_json(path, "splits")
    if not isinstance(raw, dict):
        raise InputError(f"splits: {path}: expected an object with keys train/val/test")
    unknown = sorted(set(raw) - set(SPLITS))
    if unknown:
        raise InputError(f"splits: {path}: unknown split {unknown[0]!r} (known: train, val, test)")
    out: dict[str, list[str]] = {}
    for split in SPLITS:
        names = raw.get(split, [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise InputError(f"splits: {path}: {split} must be a list of tile names")
        out[split] = [n.removesuffix(".zarr") for n in names]
    return out


def write_splits(path: str | Path, splits: dict[str, list[str]]) -> Path:
    """Write a splits file atomically (after checking it)."""
    check_disjoint(splits)
    return atomic_write_text(path, json.dumps({k: list(splits.get(k, [])) for k in SPLITS}, indent=1) + "\n")


def check_disjoint(splits: dict[str, list[str]]) -> None:
    """No tile may appear twice in a split or in two splits."""
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in splits.get(split, []):
            if name in seen:
                where = f"twice in {split}" if seen[name] == split else f"in both {seen[name]} and {split}"
                raise InputError(f"splits: tile {name} is {where}")
            seen[name] = split


def resolve_splits(cfg: DataConfig, wanted: tuple[str, ...] | list[str]) -> dict[str, list[str]]:
    """Tile lists for ``wanted`` splits: explicit ``data.<split>_tiles`` override the splits file."""
    for split in wanted:
        if split not in SPLITS:
            raise InputError(f"data: unknown split {split!r} (known: train, val, test)")
    explicit = {"train": cfg.train_tiles, "val": cfg.val_tiles, "test": cfg.test_tiles}
    from_file: dict[str, list[str]] | None = None
    if any(explicit[s] is None for s in SPLITS):
        p = splits_path(cfg)
        if p.is_file() or any(explicit[s] is None for s in wanted):
            from_file = read_splits(p)
    out = {
        s: [n.removesuffix(".zarr") for n in explicit[s] or []] if explicit[s] is not None
        else (from_file or {}).get(s, [])
        for s in SPLITS
    }
    check_disjoint(out)
    for split in wanted:
        if not out[split]:
            raise InputError(f"data: the {split} tile list is empty")
        for name in out[split]:
            if not (Path(cfg.root) / f"{name}.zarr").is_dir():
                raise InputError(f"data: tile {name} ({split}) not found under {cfg.root}")
    return out


def describe_splits(splits: dict[str, list[str]]) -> str:
    """``"12 tiles (train=8, val=2, test=2)"``: the CLIs' one-line summary."""
    counts = ", ".join(f"{k}={len(v)}" for k, v in splits.items())
    return f"{sum(map(len, splits.values()))} tiles ({counts})"
