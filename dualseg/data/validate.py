"""Value checks of tiles, and ``python -m dualseg.data.validate ROOT`` to check a dataset before a run.

Reads each tile in full: structure, band dtypes (the format's, from metadata) and dates, every array
and chunk against the tile's manifest (missing array, missing chunk, changed bytes), all-NaN bands,
label range; checks that all tiles agree on classes and that the splits are non-empty and disjoint.
Prints one summary line, or one ``error:`` line naming the first bad tile (and how many are bad) and
exits 2.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from dualseg.data.manifest import verify_tile
from dualseg.data.read import read_labels, read_stream, read_stream_raw
from dualseg.data.splits import SPLITS, check_disjoint, read_splits
from dualseg.data.tile import STREAMS, TileInfo, open_group, open_tile, row_windows
from dualseg.errors import InputError, report_error


def check_labels(info: TileInfo, labels: np.ndarray) -> None:
    """Labels must lie in [0, K) or equal ``ignore_index``."""
    k, ign = info.num_classes, info.ignore_index
    bad = ((labels < 0) | (labels >= k)) & (labels != ign)
    if bad.any():
        vals = np.unique(labels[bad])[:5].tolist()
        raise InputError(
            f"tile {info.name}: labels contain {vals} outside [0, {k}) (ignore_index={ign}, {k} class_names)"
        )


def bands_with_data(info: TileInfo, key: str, group: zarr.Group | None = None) -> np.ndarray:
    """(C,) bool: does each band hold at least one finite, non-nodata value (clouds ignored)?"""
    g = group if group is not None else open_group(info.path, info.name)
    found = np.zeros(len(info.streams[key].bands), dtype=bool)
    for win in row_windows(info, key):
        data, _ = read_stream(info, key, win, group=g)
        found |= np.isfinite(data).reshape(data.shape[0], -1).any(axis=1)
        if found.all():
            break
    return found


def check_band_values(info: TileInfo, key: str, group: zarr.Group | None = None) -> None:
    """A band without a single finite value is unusable: error naming tile and band."""
    found = bands_with_data(info, key, group)
    if not found.all():
        band = info.streams[key].bands[int(np.flatnonzero(~found)[0])]
        raise InputError(f"tile {info.name}: band {key}/{band} is all NaN/nodata")


def check_quant_ranges(info: TileInfo, key: str, group: zarr.Group | None = None) -> None:
    """Every stored integer of a quantised (version 2) band is nodata or within its declared
    ``valid_range`` (a band edited or written by another tool must not decode to nonsense), and
    each band holds a valid value: one read of the integers instead of two passes."""
    quant = info.streams[key].quant
    if quant is None:
        return
    g = group if group is not None else open_group(info.path, info.name)
    found = np.zeros(len(quant), dtype=bool)
    for win in row_windows(info, key):
        parts, _ = read_stream_raw(info, key, win, group=g)
        for c, (band, q, dn) in enumerate(zip(info.streams[key].bands, quant, parts)):
            q.check_range(dn, f"tile {info.name}: band {key}/{band}")
            found[c] |= bool((dn != q.nodata).any())
    if not found.all():
        band = info.streams[key].bands[int(np.flatnonzero(~found)[0])]
        raise InputError(f"tile {info.name}: band {key}/{band} is all NaN/nodata")


def check_band_sets(infos: list[TileInfo]) -> None:
    """All tiles list the same bands per stream (a dataset mixing format versions or sources
    must not feed a model different channels from tile to tile): one error naming both tiles."""
    first = infos[0]
    for info in infos[1:]:
        for key in STREAMS:
            have, want = info.streams[key].bands, first.streams[key].bands
            if have != want:
                odd = sorted(set(have) ^ set(want)) or have
                holder, lacker = (info, first) if odd[0] in have else (first, info)
                raise InputError(
                    f"tile {lacker.name} (format version {lacker.version}): band {key}/{odd[0]} is missing or out "
                    f"of order, but tile {holder.name} (format version {holder.version}) has {key} bands "
                    f"{holder.streams[key].bands}"
                )


def validate_tile(path: str | Path, s1_bands: list[str] | None = None, s2_bands: list[str] | None = None) -> TileInfo:
    """Check a tile completely: structure, dates, manifest (every chunk's checksum), quantised
    values in their declared range, every band has data, labels in range."""
    info = open_tile(path, s1_bands, s2_bands)
    g = open_group(info.path, info.name)
    verify_tile(info.path, info.name, g, info.attrs)
    for key in STREAMS:
        if info.streams[key].quant is not None:
            check_quant_ranges(info, key, g)  # ranges and data in one read of the integers
        else:
            check_band_values(info, key, g)
    check_labels(info, read_labels(info, group=g))
    return info


def validate_tiles(
    root: Path, names: list[str], s1_bands: list[str] | None = None, s2_bands: list[str] | None = None,
    workers: int = 4,
) -> list[TileInfo]:
    """:func:`validate_tile` on ``names`` under ``root`` (threads); the first error names its tile
    and how many are bad. All tiles must agree on class names and ignore index."""

    def one(name: str) -> TileInfo | InputError:
        try:
            return validate_tile(root / f"{name}.zarr", s1_bands, s2_bands)
        except InputError as exc:
            return exc

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = list(pool.map(one, names))
    errors = [r for r in results if isinstance(r, InputError)]
    if errors:
        more = f" ({len(errors)} of {len(names)} tiles are invalid)" if len(errors) > 1 else ""
        raise InputError(f"{errors[0]}{more}")
    infos = [r for r in results if isinstance(r, TileInfo)]
    check_band_sets(infos)
    for info in infos[1:]:
        if info.class_names != infos[0].class_names:
            raise InputError(f"tile {info.name}: class_names differ from tile {infos[0].name}")
        if info.ignore_index != infos[0].ignore_index:
            raise InputError(f"tile {info.name}: ignore_index {info.ignore_index} != {infos[0].ignore_index} "
                             f"of tile {infos[0].name}")
    return infos


def validate_root(
    root: str | Path, s1_bands: list[str] | None = None, s2_bands: list[str] | None = None, workers: int = 4
) -> list[TileInfo]:
    """Validate the tiles of ``root`` (those in splits.json if present, else every ``*.zarr``)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"validate: {root} is not a directory")
    if (root / "splits.json").is_file():
        splits = read_splits(root / "splits.json")
        check_disjoint(splits)
        for split in SPLITS:
            if not splits[split]:
                raise InputError(f"validate: {root / 'splits.json'}: the {split} tile list is empty")
        names = [n for s in splits.values() for n in s]
    else:
        names = sorted(p.name.removesuffix(".zarr") for p in root.glob("*.zarr"))
    if not names:
        raise InputError(f"validate: no tiles under {root}")
    return validate_tiles(root, names, s1_bands, s2_bands, workers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 prog="python -m dualseg.data.validate", description=__doc__.splitlines()[0])
    ap.add_argument("root", help="tile root (holding <tile>.zarr and splits.json)")
    ap.add_argument("--s1-bands", nargs="+", default=None, help="bands that must exist (default: all listed)")
    ap.add_argument("--s2-bands", nargs="+", default=None)
    ap.add_argument("--workers", type=int, default=4)
    a = ap.parse_args(argv)
    try:
        infos = validate_root(a.root, a.s1_bands, a.s2_bands, a.workers)
    except InputError as exc:
        return report_error(exc)
    t1 = [i.streams["s1"].t for i in infos]
    t2 = [i.streams["s2"].t for i in infos]
    print(
        f"ok: {len(infos)} tiles, {infos[0].num_classes} classes, "
        f"T(s1) {min(t1)}-{max(t1)}, T(s2) {min(t2)}-{max(t2)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
