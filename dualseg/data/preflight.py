"""Pre-flight check of a whole dataset before a search spends any compute: :func:`check_dataset`.

A search that finds an empty test list, a lost chunk or an all-NaN band in a val tile only after
all its training has wasted the allocation. So the launcher (also ``--dry-run`` and
``--prepare-only``) calls this first: every split is non-empty, disjoint and on disk, and every
train, val *and* test tile passes :func:`~dualseg.data.validate.validate_tile` (structure, band
dtypes, sorted dates, every chunk against the manifest, each band finite somewhere, labels in range)
with the configured bands; all tiles agree on classes and fit ``data.max_t``.

Reading a large dataset in full takes a while, so a success is remembered in
``<root>/.dualseg-checked/<key>`` where the key covers the bands and every tile's content stamp
(:func:`~dualseg.data.manifest.content_stamp`): any change to any tile checks again.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from dualseg.config import DataConfig
from dualseg.data.manifest import content_stamp
from dualseg.data.splits import SPLITS, resolve_splits
from dualseg.data.tile import STREAMS, tile_path
from dualseg.data.validate import validate_tiles
from dualseg.errors import InputError
from dualseg.io import atomic_write_text

log = logging.getLogger("dualseg.data.preflight")

CHECKED_DIR = ".dualseg-checked"


def _key(cfg: DataConfig, names: list[str]) -> str:
    stamps = [[n, content_stamp(tile_path(cfg.root, n))] for n in sorted(names)]
    # v2: band dtypes are checked (tile.FORMAT_DTYPES); a success remembered by v1 did not check them
    doc = {"v": 2, "s1": cfg.s1_bands, "s2": cfg.s2_bands, "max_t": cfg.max_t, "patch": cfg.patch_size, "tiles": stamps}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:24]


def to_be_generated(cfg: DataConfig) -> bool:
    """True when ``cfg`` describes synthetic data not generated yet (no splits file, no tile lists)."""
    splits = Path(cfg.splits) if cfg.splits else Path(cfg.root) / "splits.json"
    return cfg.synthetic is not None and cfg.train_tiles is None and not splits.is_file()


def check_dataset(
    cfg: DataConfig, *, workers: int = 4, remember: bool = True, missing_ok: bool = False
) -> dict[str, list[str]] | None:
    """Raise one :class:`InputError` naming the first problem of the dataset ``cfg`` describes
    (see module doc); returns the train/val/test tile lists. Creates nothing but, on success,
    the small ``.dualseg-checked`` marker (skipped silently where the root is read-only).

    ``missing_ok``: synthetic data that is still to be generated is not an error (returns None);
    a launcher's dry run checks what exists, its preparation checks again after generating.
    """
    root = Path(cfg.root)
    if root.exists() and not root.is_dir():
        raise InputError(f"data.root: {root} is a file, not a folder of tiles")
    if missing_ok and to_be_generated(cfg):
        return None
    if not root.is_dir():
        raise InputError(f"data.root {root} does not exist")
    lists = resolve_splits(cfg, SPLITS)  # each list non-empty, disjoint, every tile on disk
    names = [n for s in SPLITS for n in lists[s]]
    marker = root / CHECKED_DIR / _key(cfg, names) if remember else None
    if marker is not None and marker.is_file():
        log.info("dataset %s unchanged since it was last checked (%s)", root, marker.name)
        return lists
    infos = validate_tiles(root, names, cfg.s1_bands, cfg.s2_bands, workers)
    small = min(infos, key=lambda i: min(i.height, i.width), default=None)
    if small is not None and cfg.patch_size > min(small.height, small.width):
        raise InputError(f"config: data.patch_size: {cfg.patch_size} is larger than tile {small.name} "
                         f"({small.height}x{small.width})")
    if cfg.max_t is not None:
        for info in infos:
            for key in STREAMS:
                if info.streams[key].t > cfg.max_t:
                    raise InputError(f"tile {info.name}: {key} has T={info.streams[key].t} > data.max_t={cfg.max_t}")
    if marker is not None:
        try:
            atomic_write_text(marker, json.dumps({s: len(lists[s]) for s in SPLITS}) + "\n")
        except OSError as exc:  # a read-only shared dataset: check again next time
            log.info("could not remember the check in %s: %s", marker, exc)
    return lists
