"""PASTIS-R importer (``python -m dualseg.data.pastis SRC DST --folds 1,2,3/4/5``).

Converts the published layout (``metadata.geojson``, ``DATA_S2/S2_{ID}.npy`` T x 10 x H x W int16,
``DATA_S1A/S1A_{ID}.npy`` (or ``S1D``, ``--orbit``) T x 3 x H x W dB (VV, VH, VV/VH ratio),
``ANNOTATIONS/TARGET_{ID}.npy`` with the semantic class in channel 0) into one dualseg tile per
patch plus ``splits.json`` built from the official folds. Class 19 ("void") becomes the ignore index, so
K = 19. Every problem in
the source names the patch and the file; ``splits.json`` is written only after every tile.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np

from dualseg.config import S2_BANDS
from dualseg.data.folds import write_folds
from dualseg.data.splits import describe_splits, write_splits
from dualseg.data.tile import Stream, Tile, tile_path
from dualseg.data.write import write_tile
from dualseg.errors import InputError, report_error
from dualseg.io import atomic_write_text, read_json, staged_dir

CLASS_NAMES = [
    "Background", "Meadow", "Soft winter wheat", "Corn", "Winter barley", "Winter rapeseed",
    "Spring barley", "Sunflower", "Grapevine", "Beet", "Winter triticale", "Winter durum wheat",
    "Fruits, vegetables, flowers", "Potatoes", "Leguminous fodder", "Soybeans", "Orchard",
    "Mixed cereal", "Sorghum",
]  # fmt: skip
VOID = 19
MARKER = "pastis.json"  # an import (source, folds, orbit): the only folder --overwrite replaces
S1_NAMES = ["VV", "VH", "RATIO"]  # RATIO = VV/VH in dB (the third PASTIS-R channel)
EPOCH = date(1970, 1, 1)


def parse_folds(spec: str) -> dict[str, list[int]]:
    """``"1,2,3/4/5"`` -> {"train": [1,2,3], "val": [4], "test": [5]}."""
    parts = spec.split("/")
    if len(parts) != 3:
        raise InputError(f"pastis: --folds must look like TRAIN/VAL/TEST, e.g. 1,2,3/4/5; got {spec!r}")
    out: dict[str, list[int]] = {}
    for split, part in zip(("train", "val", "test"), parts):
        try:
            out[split] = [int(f) for f in part.split(",") if f.strip()]
        except ValueError:
            raise InputError(f"pastis: --folds: {split} folds {part!r} are not integers") from None
    seen = [f for v in out.values() for f in v]
    if len(seen) != len(set(seen)):
        raise InputError(f"pastis: --folds {spec!r} puts a fold in two splits")
    if not out["train"]:
        raise InputError("pastis: --folds gives no train fold")
    return out


def _dates(props: dict[str, Any], key: str, pid: str) -> np.ndarray:
    raw = props.get(key)
    if isinstance(raw, str):  # some releases store the mapping as a JSON string
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError:
            raise InputError(f"pastis: patch {pid}: {key} is not valid JSON") from None
    if not isinstance(raw, dict) or not raw:
        raise InputError(f"pastis: patch {pid}: metadata has no {key} mapping")
    try:
        items = sorted(((int(k), int(v)) for k, v in raw.items()), key=lambda kv: kv[0])
        days = [(date(v // 10000, v // 100 % 100, v % 100) - EPOCH).days for _, v in items]
    except (TypeError, ValueError):
        raise InputError(f"pastis: patch {pid}: {key} holds a value that is not a YYYYMMDD date") from None
    return np.asarray(days, dtype=np.int32)


def _load(path: Path, pid: str) -> np.ndarray:
    if not path.is_file():
        raise InputError(f"pastis: patch {pid}: missing file {path}")
    try:
        return np.load(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"pastis: patch {pid}: cannot read {path} ({exc})") from None


def _transform(geometry: dict[str, Any] | None, h: int) -> list[float] | None:
    """GDAL-order affine (a, b, c, d, e, f) from the patch polygon (10 m pixels)."""
    try:
        coords = np.asarray(geometry["coordinates"][0], dtype=np.float64)  # type: ignore[index]
    except (TypeError, KeyError, IndexError, ValueError):
        return None
    if coords.ndim != 2 or coords.shape[1] < 2:
        return None
    x0, y1 = coords[:, 0].min(), coords[:, 1].max()
    res = (coords[:, 0].max() - x0) / h
    return [float(res), 0.0, float(x0), 0.0, float(-res), float(y1)]


def convert_patch(src: Path, feature: dict[str, Any], crs: str | None, orbit: str = "S1A") -> tuple[str, Tile]:
    """One PASTIS-R patch -> (tile name, Tile); ``orbit`` picks ascending (S1A) or descending (S1D) S1."""
    props = feature.get("properties") or {}
    if "ID_PATCH" not in props:
        raise InputError("pastis: a metadata feature has no ID_PATCH")
    pid = str(props["ID_PATCH"])
    s2 = _load(src / "DATA_S2" / f"S2_{pid}.npy", pid)
    s1 = _load(src / f"DATA_{orbit}" / f"{orbit}_{pid}.npy", pid)
    target = _load(src / "ANNOTATIONS" / f"TARGET_{pid}.npy", pid)
    if s2.ndim != 4 or s2.shape[1] != len(S2_BANDS):
        raise InputError(f"pastis: patch {pid}: S2_{pid}.npy has shape {s2.shape}, expected (T, 10, H, W)")
    if s1.ndim != 4 or s1.shape[1] != 3:
        raise InputError(f"pastis: patch {pid}: {orbit}_{pid}.npy has shape {s1.shape}, expected (T, 3, H, W)")
    labels = target[0] if target.ndim == 3 else target
    hw = s2.shape[2:]
    if s1.shape[2:] != hw or labels.shape != hw:
        raise InputError(f"pastis: patch {pid}: S2 {hw}, {orbit} {s1.shape[2:]} and TARGET {labels.shape} sizes differ")
    d2, d1 = _dates(props, "dates-S2", pid), _dates(props, f"dates-{orbit}", pid)
    for key, arr, d in (("S2", s2, d2), (orbit, s1, d1)):
        if arr.shape[0] != d.size:
            raise InputError(
                f"pastis: patch {pid}: {key}_{pid}.npy has T={arr.shape[0]} but dates-{key} lists {d.size}"
            )
    labels = labels.astype(np.int16)
    bad = (labels < 0) | (labels > VOID)
    if bad.any():
        vals = np.unique(labels[bad])[:5].tolist()
        raise InputError(f"pastis: patch {pid}: TARGET holds classes {vals} outside 0..19")
    tile = Tile(
        s1=Stream({b: s1[:, i].astype(np.float32) for i, b in enumerate(S1_NAMES)}, d1),
        s2=Stream({b: s2[:, i].astype(np.float32) for i, b in enumerate(S2_BANDS)}, d2),
        labels=labels,
        class_names=list(CLASS_NAMES),
        ignore_index=VOID,
        crs=crs,
        transform=_transform(feature.get("geometry"), hw[0]),
    )
    return f"pastis_{pid}", tile


def read_metadata(src: Path) -> tuple[list[dict[str, Any]], str | None]:
    """Features of ``metadata.geojson`` and the CRS name if declared."""
    path = src / "metadata.geojson"
    if not path.is_file():
        raise InputError(f"pastis: {src} has no metadata.geojson (is it a PASTIS-R folder?)")
    doc = read_json(path, "pastis")
    feats = doc.get("features") if isinstance(doc, dict) else None
    if not isinstance(feats, list) or not feats:
        raise InputError(f"pastis: {path}: no features")
    crs = ((doc.get("crs") or {}).get("properties") or {}).get("name")
    return feats, crs


def _choose(
    feats: list[dict[str, Any]], folds: str, limit: int | None, src: Path
) -> list[tuple[str, dict[str, Any]]]:
    """(split, feature) of every patch to import. Every requested fold must exist in the metadata
    and every split must get a patch: an empty test list would only fail after a whole search.
    ``limit`` takes patches round-robin over the splits, so each keeps at least one."""
    wanted = parse_folds(folds)
    fold_of = {f: s for s, fs in wanted.items() for f in fs}
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    present: set[int] = set()
    for feat in feats:
        props = feat.get("properties") or {}
        fold = props.get("Fold")
        if not isinstance(fold, int) or isinstance(fold, bool):
            raise InputError(f"pastis: patch {props.get('ID_PATCH')}: metadata has no integer Fold")
        present.add(fold)
        if fold in fold_of:
            by_split[fold_of[fold]].append(feat)
    for split, fs in wanted.items():
        if not fs:
            raise InputError(f"pastis: --folds {folds!r} gives the {split} split no fold (TRAIN/VAL/TEST all need one)")
        for f in fs:
            if f not in present:
                have = ",".join(map(str, sorted(present)))
                raise InputError(f"pastis: --folds: {split} fold {f} does not exist in {src}/metadata.geojson "
                                 f"(folds: {have})")
    if limit is not None and limit < 3:
        raise InputError(f"pastis: --limit must be >= 3 (one patch per split), got {limit}")
    rounds = itertools.zip_longest(*([(s, f) for f in feats] for s, feats in by_split.items()))
    order = [item for r in rounds for item in r if item is not None]
    return order[:limit] if limit else order


def import_pastis(
    src: str | Path, dst: str | Path, folds: str = "1,2,3/4/5", *, limit: int | None = None,
    workers: int = 4, overwrite: bool = False, orbit: str = "S1A",
) -> dict[str, list[str]]:
    """Convert ``src`` into tiles under ``dst``, all or nothing: written into a temp folder beside
    ``dst`` and renamed into place at the end; returns the splits (also written to splits.json).

    ``dst`` must not be, contain or lie inside ``src``; ``overwrite`` replaces only an earlier import
    (a folder holding ``pastis.json``), never the source or a folder someone else wrote."""
    src, dst = Path(src), Path(dst)
    parse_folds(folds)
    if orbit not in ("S1A", "S1D"):
        raise InputError(f"pastis: --orbit must be S1A or S1D, got {orbit!r}")
    if not src.is_dir():
        raise InputError(f"pastis: source folder {src} not found")
    feats, crs = read_metadata(src)
    chosen = _choose(feats, folds, limit, src)

    splits: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with staged_dir(dst, "pastis: DST", overwrite=overwrite, marker=MARKER, inputs={"source folder SRC": src}) as tmp:
        atomic_write_text(tmp / MARKER, json.dumps({"source": str(src), "folds": folds, "limit": limit,
                                                    "orbit": orbit}, indent=1) + "\n")  # marks the dir as ours

        def one(item: tuple[str, dict[str, Any]]) -> tuple[str, str, int]:
            name, tile = convert_patch(src, item[1], crs, orbit)
            write_tile(tile_path(tmp, name), tile)
            return item[0], name, int(item[1]["properties"]["Fold"])

        by_fold: dict[int, list[str]] = {}
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            for split, name, fold in pool.map(one, chosen):
                splits[split].append(name)
                by_fold.setdefault(fold, []).append(name)
        write_splits(tmp / "splits.json", splits)
        write_folds(tmp, {str(f): by_fold[f] for f in sorted(by_fold)})  # hpc.final.folds: all rotates them
    return splits


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(allow_abbrev=False,
                                 prog="python -m dualseg.data.pastis", description=__doc__.splitlines()[0])
    ap.add_argument("src", help="PASTIS-R folder (metadata.geojson, DATA_S2, DATA_S1A, ANNOTATIONS)")
    ap.add_argument("dst", help="output tile root")
    ap.add_argument("--folds", default="1,2,3/4/5", help="TRAIN/VAL/TEST fold lists (default 1,2,3/4/5)")
    ap.add_argument("--limit", type=int, default=None, help="convert only the first N patches")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--orbit", default="S1A", help="Sentinel-1 orbit to import: S1A (ascending) or S1D")
    ap.add_argument("--overwrite", action="store_true")
    a = ap.parse_args(argv)
    try:
        splits = import_pastis(
            a.src, a.dst, a.folds, limit=a.limit, workers=a.workers, overwrite=a.overwrite, orbit=a.orbit
        )
    except InputError as exc:
        return report_error(exc)
    print(f"wrote {describe_splits(splits)} to {a.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
