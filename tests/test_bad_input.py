"""The bad-input battery: every user error is one ``error:`` line naming what is wrong, exit 2,
no traceback, and nothing written.

Each case damages a copy of a tiny generated dataset (3 tiles of 16x16: train tile_000, val
tile_001, test tile_002) or passes a bad option, runs a real entry point's ``main`` (the data CLIs,
``hpc/launch.py --dry-run/--prepare-only``, ``hpc/status.py``, ``hpc/report.py``) and checks the exit code, that
stderr is exactly one ``error:`` line matching the case, and that every file under the test's
folder is byte-for-byte unchanged (no half-written dataset, study database or run folder).
A few cases run as subprocesses: the training CLI, and a read-only ``--scratch`` as a second user.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import zarr

from dualseg.config import SyntheticConfig
from dualseg.data import convert, pastis, synthetic, validate
from dualseg.data.quant import QUANT
from dualseg.data.read import read_tile
from dualseg.data.synthetic import generate
from dualseg.data.write import rewrite_manifest, write_tile

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "configs" / "tiny.yaml"
TRAIN, VAL, TEST = "tile_000", "tile_001", "tile_002"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("battery") / "data"
    generate(root, SyntheticConfig(tiles=3, size=16, classes=3, s1_dates=3, s2_dates=3))
    return root


def _fake_pastis(src: Path) -> Path:
    """Five 8x8 patches in folds 1..5 in the published PASTIS-R layout."""
    rng = np.random.default_rng(0)
    for d in ("DATA_S2", "DATA_S1A", "ANNOTATIONS"):
        (src / d).mkdir(parents=True)
    feats = []
    for i in range(5):
        pid = 100 + i
        np.save(src / "DATA_S2" / f"S2_{pid}.npy", rng.integers(0, 8000, (2, 10, 8, 8)).astype(np.int16))
        np.save(src / "DATA_S1A" / f"S1A_{pid}.npy", rng.normal(-12, 3, (2, 3, 8, 8)).astype(np.float32))
        np.save(src / "ANNOTATIONS" / f"TARGET_{pid}.npy", rng.integers(0, 20, (3, 8, 8)))
        dates = {"0": 20180910, "1": 20180920}
        feats.append({"properties": {"ID_PATCH": pid, "Fold": i + 1, "dates-S2": dates, "dates-S1A": dates}})
    (src / "metadata.geojson").write_text(json.dumps({"features": feats}))
    return src


def _chunk(root: Path, tile: str, array: str) -> Path:
    """The first chunk file of ``array`` (e.g. ``s2/B02``) of ``tile``."""
    f = root / f"{tile}.zarr" / array / "c"
    while f.is_dir():
        f = min(f.iterdir())
    return f


def _rewrite(root: Path, tile: str, fn: Callable[[zarr.Group], object]) -> None:
    """Edit a tile with zarr and record its manifest: a bad tile as a buggy exporter writes it."""
    fn(zarr.open_group(str(root / f"{tile}.zarr"), mode="a"))
    rewrite_manifest(root / f"{tile}.zarr")


def _nan_band(stream: str, band: str) -> Callable[[zarr.Group], object]:
    def edit(g: zarr.Group) -> object:  # every value missing, stored as the tile's format stores it
        shape, q = g[f"{stream}/{band}"].shape, QUANT[stream]
        return g[stream].create_array(band, data=np.full(shape, q.nodata, q.dtype), overwrite=True,
                                      attributes=q.attrs())

    return edit


def _int8_band(stream: str, band: str) -> Callable[[zarr.Group], object]:
    """The band stored as int8 (the format says float32): a buggy exporter's quantised copy."""
    def edit(g: zarr.Group) -> object:
        shape = g[f"{stream}/{band}"].shape
        return g[stream].create_array(band, data=np.ones(shape, "i1"), overwrite=True)

    return edit


def _splits(root: Path, **lists: list[str]) -> None:
    (root / "splits.json").write_text(json.dumps({"train": [TRAIN], "val": [VAL], "test": [TEST]} | lists))


def _pastis_without_s1_of_patch_103(ws: Path) -> list[str]:
    """A source whose fourth patch lacks its S1 file: the import fails after writing tiles."""
    src = _fake_pastis(ws / "P")
    (src / "DATA_S1A" / "S1A_103.npy").unlink()
    return [str(src), str(ws / "out"), "--folds", "1,2,3/4/5", "--workers", "1"]


def _link(link: Path, target: Path) -> Path:
    link.symlink_to(target)
    return link


def _drop_attr(array: str, attr: str) -> Callable[[zarr.Group], object]:
    return lambda g: g[array].attrs.__delitem__(attr)


def _v1_without(tile: str, stream: str, band: str) -> Callable[[Path], object]:
    """Rewrite ``tile`` in format version 1 without one band: a dataset mixing versions and band sets."""
    def damage(d: Path) -> None:
        t = read_tile(d / f"{tile}.zarr")
        del getattr(t, stream).bands[band]
        write_tile(d / f"{tile}.zarr", t, version=1, overwrite=True)

    return damage


def _convert_args(ws: Path, d: Path) -> list[str]:
    return [str(d), str(ws / "v2")]


def _reverse_dates(g: zarr.Group) -> None:
    g["s2/time"][...] = np.asarray(g["s2/time"][...])[::-1].copy()


def _flip_byte(f: Path) -> None:
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    f.write_bytes(bytes(raw))


# ---- the cases --------------------------------------------------------------------------------
# Each: (id, tool, setup(ws, data) -> argv, regex the single error line must match). ``ws`` is the
# test's folder (snapshotted after setup), ``data`` a fresh copy of the dataset inside it.
Setup = Callable[[Path, Path], list[str]]


@dataclass
class Case:
    id: str
    tool: str
    setup: Setup
    expect: str


def _launch(mode: str, *sets: str) -> Callable[[Path, Path], list[str]]:
    def argv(ws: Path, data: Path) -> list[str]:
        out = ["--config", str(TINY), "--executor", "local", "--scratch", str(ws / "scratch"), mode,
               "--set", f"data.root={data}"]
        for s in sets:
            out += ["--set", s]
        return out

    return argv


def _then(damage: Callable[[Path], object], argv: Callable[[Path, Path], list[str]]) -> Setup:
    def setup(ws: Path, data: Path) -> list[str]:
        damage(data)
        return argv(ws, data)

    return setup


def _config_file(text: str, mode: str) -> Setup:
    """The launcher given a config file holding ``text`` (empty, or YAML that is not a mapping)."""
    def setup(ws: Path, data: Path) -> list[str]:
        (ws / "bad.yaml").write_text(text)
        return ["--config", str(ws / "bad.yaml"), "--executor", "local", "--scratch", str(ws / "scratch"), mode]

    return setup


def _validate(ws: Path, data: Path) -> list[str]:
    return [str(data)]


CASES = [
    # -- item 1: manifest: missing chunk, missing band directory, changed bytes (validate, reader, launcher)
    Case("validate-missing-chunk", "validate", _then(lambda d: _chunk(d, TRAIN, "s2/B02").unlink(), _validate),
         rf"tile {TRAIN}: band s2/B02: missing chunk c/0/0/0"),
    Case("validate-missing-band-dir", "validate", _then(lambda d: shutil.rmtree(d / f"{VAL}.zarr/s2/B03"), _validate),
         rf"tile {VAL}: band s2/B03: its directory s2/B03/ is missing"),
    Case("validate-changed-chunk", "validate", _then(lambda d: _flip_byte(_chunk(d, TEST, "s1/VH")), _validate),
         rf"tile {TEST}: band s1/VH: chunk c/0/0/0 differs from the manifest"),
    Case("validate-missing-label-chunk", "validate", _then(lambda d: _chunk(d, TEST, "labels").unlink(), _validate),
         rf"tile {TEST}: array labels: missing chunk c/0/0"),
    Case("validate-missing-time-chunk", "validate", _then(lambda d: _chunk(d, VAL, "s1/time").unlink(), _validate),
         rf"tile {VAL}: array s1/time: missing chunk c/0"),
    Case("validate-missing-manifest", "validate",
         _then(lambda d: (d / f"{TRAIN}.zarr/manifest.json").unlink(), _validate),
         rf"tile {TRAIN}: manifest.json is missing"),
    Case("validate-broken-manifest", "validate",
         _then(lambda d: (d / f"{TRAIN}.zarr/manifest.json").write_text("{nope"), _validate),
         rf"tile {TRAIN}: manifest.json is unreadable"),
    Case("prepare-missing-chunk", "launch",
         _then(lambda d: _chunk(d, TEST, "s2/B04").unlink(), _launch("--prepare-only")),
         rf"tile {TEST}: band s2/B04: missing chunk c/0/0/0"),
    Case("prepare-missing-band-dir", "launch",
         _then(lambda d: shutil.rmtree(d / f"{VAL}.zarr/s1/VV"), _launch("--prepare-only")),
         rf"tile {VAL}: band s1/VV: its directory s1/VV/ is missing"),
    Case("dry-run-changed-chunk", "launch", _then(lambda d: _flip_byte(_chunk(d, VAL, "s2/B08")), _launch("--dry-run")),
         rf"tile {VAL}: band s2/B08: chunk c/0/0/0 differs from the manifest"),
    # -- issue 17: quantised tiles (format version 2) and the converter
    Case("validate-v2-missing-scale", "validate", _then(lambda d: _rewrite(d, TRAIN, _drop_attr("s2/B04", "scale")),
                                                        _validate),
         rf"tile {TRAIN}: band s2/B04: format version 2 band lacks attribute scale"),
    Case("prepare-v2-missing-nodata", "launch",
         _then(lambda d: _rewrite(d, VAL, _drop_attr("s1/VH", "nodata")), _launch("--prepare-only")),
         rf"tile {VAL}: band s1/VH: format version 2 band lacks attribute nodata"),
    Case("validate-v2-value-out-of-range", "validate",
         _then(lambda d: _rewrite(d, TEST, lambda g: g["s1/VV"].__setitem__((0, 1, 2), 20000)), _validate),
         rf"tile {TEST}: band s1/VV: value 20000 outside the declared valid_range \[-10000, 10000\]"),
    Case("dry-run-v2-value-out-of-range", "launch",
         _then(lambda d: _rewrite(d, TRAIN, lambda g: g["s1/VH"].__setitem__((0, 0, 0), -20000)), _launch("--dry-run")),
         rf"tile {TRAIN}: band s1/VH: value -20000 outside the declared valid_range"),
    Case("validate-mixed-versions-band-sets", "validate", _then(_v1_without(VAL, "s1", "VH"), _validate),
         rf"tile {VAL} \(format version 1\): band s1/VH is missing or out of order, but tile {TRAIN} "
         r"\(format version 2\) has s1 bands \['VV', 'VH'\]"),
    Case("convert-dst-not-empty", "convert",
         lambda ws, d: [str(d), str(_fake_pastis(ws / "P"))], r"convert: DST: .*/P is not empty"),
    Case("convert-dst-inside-src", "convert", lambda ws, d: [str(d), str(d / "v2")],
         r"convert: DST: .*/data/v2 is inside the source folder SRC .*/data$"),
    Case("convert-damaged-source", "convert", _then(lambda d: _chunk(d, VAL, "s2/B05").unlink(), _convert_args),
         rf"tile {VAL}: band s2/B05: missing chunk c/0/0/0"),
    Case("convert-missing-source", "convert", lambda ws, d: [str(ws / "nowhere"), str(ws / "v2")],
         r"convert: source folder .*nowhere not found"),
    # -- item 4: every split, every tile, before the search
    Case("validate-empty-test", "validate", _then(lambda d: _splits(d, test=[]), _validate),
         r"validate: .*splits.json: the test tile list is empty"),
    Case("prepare-empty-test", "launch", _then(lambda d: _splits(d, test=[]), _launch("--prepare-only")),
         r"data: the test tile list is empty"),
    Case("dry-run-empty-val", "launch", _then(lambda d: _splits(d, val=[]), _launch("--dry-run")),
         r"data: the val tile list is empty"),
    Case("prepare-nan-band-in-val", "launch",
         _then(lambda d: _rewrite(d, VAL, _nan_band("s2", "B03")), _launch("--prepare-only")),
         rf"tile {VAL}: band s2/B03 is all NaN/nodata"),
    Case("validate-nan-band-in-test", "validate", _then(lambda d: _rewrite(d, TEST, _nan_band("s1", "VV")), _validate),
         rf"tile {TEST}: band s1/VV is all NaN/nodata"),
    Case("prepare-labels-out-of-range-in-test", "launch",
         _then(lambda d: _rewrite(d, TEST, lambda g: g["labels"].__setitem__((0, 0), 7)), _launch("--prepare-only")),
         rf"tile {TEST}: labels contain \[7\] outside \[0, 4\)"),
    Case("dry-run-unsorted-dates-in-test", "launch",
         _then(lambda d: _rewrite(d, TEST, _reverse_dates), _launch("--dry-run")),
         rf"tile {TEST}: s2/time is not sorted"),
    Case("dry-run-missing-tile", "launch", _then(lambda d: _splits(d, test=["tile_009"]), _launch("--dry-run")),
         r"data: tile tile_009 \(test\) not found under "),
    Case("validate-tile-in-two-splits", "validate", _then(lambda d: _splits(d, test=[TRAIN]), _validate),
         rf"splits: tile {TRAIN} is in both train and test"),
    Case("validate-missing-band-option", "validate", lambda ws, d: [str(d), "--s2-bands", "B02", "B99"],
         rf"tile {TRAIN}: missing band s2/B99"),
    Case("validate-not-a-folder", "validate", lambda ws, d: [str(ws / "nowhere")],
         r"validate: .*nowhere is not a directory"),
    # -- issue 18: a band in a dtype the format does not allow (checked from the zarr metadata, no data read)
    Case("validate-int8-band", "validate", _then(lambda d: _rewrite(d, TRAIN, _int8_band("s2", "B04")), _validate),
         rf"tile {TRAIN}: band s2/B04 is stored as int8; format version 2 allows u?int16$"),
    Case("prepare-int8-band-in-test", "launch",
         _then(lambda d: _rewrite(d, TEST, _int8_band("s1", "VH")), _launch("--prepare-only")),
         rf"tile {TEST}: band s1/VH is stored as int8; format version 2 allows u?int16$"),
    Case("dry-run-int8-band-in-val", "launch",
         _then(lambda d: _rewrite(d, VAL, _int8_band("s2", "B08")), _launch("--dry-run")),
         rf"tile {VAL}: band s2/B08 is stored as int8; format version 2 allows u?int16$"),
    # -- item 6: scratch, --out, status
    Case("dry-run-scratch-is-a-file", "launch",
         lambda ws, d: [*_launch("--dry-run")(ws, d), "--scratch", str(d / "splits.json")],
         r"--scratch: .*splits.json is not a directory"),
    Case("prepare-scratch-read-only", "launch",  # sysfs refuses new files even to root
         lambda ws, d: [*_launch("--prepare-only")(ws, d), "--scratch", "/sys/dualseg-scratch"],
         r"--scratch: /sys/dualseg-scratch is not writable \(/sys cannot hold a new folder\): Permission denied"),
    Case("status-missing-sqlite", "status", lambda ws, d: ["--study", "s", "--storage", f"sqlite:///{ws}/no/study.db"],
         r"--storage: SQLite file .*/no/study.db does not exist"),
    Case("report-missing-sqlite", "report", lambda ws, d: ["--study", "s", "--storage", f"sqlite:///{ws}/no/study.db"],
         r"--storage: SQLite file .*/no/study.db does not exist \(no study there\)$"),
    Case("report-unknown-scheme", "report", lambda ws, d: ["--study", "s", "--storage", "mysql://me@db/x"],
         r"--storage: unsupported database 'mysql'"),
    Case("synthetic-out-is-a-file", "synthetic",
         lambda ws, d: ["--out", str(d / "splits.json"), "--tiles", "3", "--size", "8"],
         r"synthetic: --out: .*splits.json is a file, not a folder"),
    Case("synthetic-out-holds-dataset", "synthetic", lambda ws, d: ["--out", str(d), "--tiles", "3", "--size", "8"],
         r"synthetic: --out: .*data already holds a dataset \(splits.json\); pass --overwrite to replace it"),
    Case("synthetic-too-few-tiles", "synthetic", lambda ws, d: ["--out", str(ws / "new"), "--tiles", "2"],
         r"synthetic: tiles must be >= 3"),
    Case("synthetic-cloud-fraction", "synthetic", lambda ws, d: ["--out", str(ws / "new"), "--cloud-fraction", "1.5"],
         r"synthetic: cloud_fraction must be in \[0, 1\]"),
    # -- item 5 / 4: the importer: all or nothing, folds that exist, every split non-empty
    Case("pastis-fold-does-not-exist", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "P")), str(ws / "out"), "--folds", "1,2/3/9"],
         r"pastis: --folds: test fold 9 does not exist in .*metadata.geojson \(folds: 1,2,3,4,5\)"),
    Case("pastis-empty-test-folds", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "P")), str(ws / "out"), "--folds", "1,2/3/"],
         r"pastis: --folds '1,2/3/' gives the test split no fold"),
    Case("pastis-limit-too-small", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "P")), str(ws / "out"), "--folds", "1/2/3", "--limit", "2"],
         r"pastis: --limit must be >= 3"),
    Case("pastis-fails-midway", "pastis", lambda ws, d: _pastis_without_s1_of_patch_103(ws),
         r"pastis: patch 103: missing file .*S1A_103.npy"),
    Case("pastis-dst-holds-dataset", "pastis",  # an earlier import (its pastis.json): --overwrite may replace it
         _then(lambda d: (d / "pastis.json").write_text("{}"),
               lambda ws, d: [str(_fake_pastis(ws / "P")), str(d), "--folds", "1/2/3"]),
         r"pastis: DST: .*data already holds a dataset \(splits.json\); pass --overwrite to replace it"),
    # -- issue 18 item 1: inputs are never outputs; --overwrite replaces only the writer's own output
    Case("pastis-overwrite-foreign-dataset", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "P")), str(d), "--folds", "1/2/3", "--overwrite"],
         r"pastis: DST: .*data already holds a dataset \(splits.json\) not written by this tool \(no pastis.json\); "
         r"it is never replaced \(--overwrite replaces only this tool's own output\)$"),
    Case("pastis-dst-is-src", "pastis", lambda ws, d: [str(_fake_pastis(ws / "P")), str(ws / "P"), "--overwrite"],
         r"pastis: DST: .*/P is the source folder SRC .*/P$"),
    Case("pastis-dst-inside-src", "pastis", lambda ws, d: [str(_fake_pastis(ws / "P")), str(ws / "P" / "tiles")],
         r"pastis: DST: .*/P/tiles is inside the source folder SRC .*/P$"),
    Case("pastis-dst-contains-src", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "in" / "P")), str(ws / "in"), "--overwrite"],
         r"pastis: DST: .*/in contains the source folder SRC .*/in/P$"),
    Case("pastis-dst-links-to-src", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "P")), str(_link(ws / "L", ws / "P")), "--overwrite"],
         r"pastis: DST: .*/L is the source folder SRC .*/P$"),
    Case("synthetic-overwrite-foreign-dataset", "synthetic",
         _then(lambda d: (d / "synthetic.json").unlink(),
               lambda ws, d: ["--out", str(d), "--tiles", "3", "--overwrite"]),
         r"synthetic: --out: .*data already holds a dataset \(splits.json\) not written by this tool "
         r"\(no synthetic.json\); it is never replaced"),
    Case("synthetic-overwrite-foreign-folder", "synthetic",
         lambda ws, d: ["--out", str(ws), "--tiles", "3", "--overwrite"],
         r"synthetic: --out: .* already holds files not written by this tool \(no synthetic.json\)"),
    Case("pastis-dst-is-a-file", "pastis",
         lambda ws, d: [str(_fake_pastis(ws / "P")), str(d / "splits.json"), "--folds", "1/2/3"],
         r"pastis: DST: .*splits.json is a file, not a folder"),
    # -- item 7: config choices name themselves
    Case("config-temporal-choice", "launch", _launch("--dry-run", "model.temporal=lstm"),
         r"config: model.temporal: must be one of ltae, mean \(got 'lstm'\)"),
    Case("config-stats-cache-choice", "launch", _launch("--dry-run", "data.stats_cache=maybe"),
         r"config: data.stats_cache: must be one of read, rebuild, off \(got 'maybe'\)"),
    Case("config-date-encoding-choice", "launch", _launch("--prepare-only", "data.date_encoding=weeks"),
         r"config: data.date_encoding: must be one of doy, days \(got 'weeks'\)"),
    # -- issue 18: a config file that is empty or not a mapping never means "all defaults"
    Case("config-file-empty", "launch", _config_file("", "--dry-run"),
         r"config: .*bad.yaml is empty \(leave out --config for all defaults\)$"),
    Case("config-file-only-a-comment", "launch", _config_file("# nothing yet\n", "--prepare-only"),
         r"config: .*bad.yaml is empty"),
    Case("config-file-a-list", "launch", _config_file("- data\n- model\n", "--dry-run"),
         r"config: .*bad.yaml: top level must be a mapping of sections, got list$"),
    Case("config-file-a-string", "launch", _config_file("tiny\n", "--prepare-only"),
         r"config: .*bad.yaml: top level must be a mapping of sections, got str$"),
    # -- issue 18: checks that came too late (after the study was created) or not at all
    Case("set-not-yaml", "launch", _launch("--dry-run", "train.epochs=[1"),
         r"--set: train.epochs=\[1: not a YAML value"),
    Case("prepare-zero-epochs", "launch", _launch("--prepare-only", "train.epochs=0"),
         r"config: train.epochs: must be >= 1 \(got 0\)"),
    Case("prepare-zero-batch", "launch", _launch("--prepare-only", "train.batch_size=0"),
         r"config: train.batch_size: must be >= 1 \(got 0\)"),
    Case("dry-run-negative-batch", "launch", _launch("--dry-run", "train.batch_size=-4"),
         r"config: train.batch_size: must be >= 1 \(got -4\)"),
    Case("prepare-patch-larger-than-tiles", "launch", _launch("--prepare-only", "data.patch_size=64"),
         r"config: data.patch_size: 64 is larger than tile tile_00\d \(16x16\)"),
    Case("dry-run-search-corner", "launch",
         _launch("--dry-run", "hpc.search={train.batch_size: {type: int, low: 2, high: 0}}"),
         r"config: hpc.search.train.batch_size: needs low <= high"),
    Case("dry-run-search-upper-corner", "launch",
         _launch("--dry-run", "hpc.search={train.warmup_epochs: {type: int, low: 0, high: -1}}"),
         r"hpc.search.train.warmup_epochs: needs low <= high"),
    Case("dry-run-data-root-is-a-file", "launch",
         lambda ws, d: [*_launch("--dry-run")(ws, d), "--set", f"data.root={d / 'splits.json'}"],
         r"data.root: .*splits.json is a file, not a folder of tiles"),
    Case("dry-run-unreachable-database", "launch",
         lambda ws, d: [*_launch("--dry-run", "data.patch_size=16")(ws, d), "--storage",
                        "postgresql://me@127.0.0.1:1/optuna"],
         r"storage postgresql\+psycopg2://me@127.0.0.1:1/optuna: unreachable"),
    # -- issue 16: hpc.final, before anything is submitted (also --dry-run)
    Case("final-negative-seeds", "launch", _launch("--dry-run", "hpc.final={seeds: -1}"),
         r"hpc.final.seeds: must be >= 0 \(0: no final runs; got -1\)"),
    Case("final-top-k-above-trials", "launch", _launch("--dry-run", "hpc.final={seeds: 2, top_k: 3}"),
         r"hpc.final.top_k: 3 configurations asked, but the search has at most 2 complete trials"),
    Case("final-folds-without-folds", "launch", _launch("--dry-run", "hpc.final={seeds: 1, folds: all}"),
         r"hpc.final.folds: all needs a dataset with folds, and .*/data has none \(no folds.json"),
    Case("final-refit-epochs-underived", "launch", _launch("--prepare-only", "hpc.final={seeds: 1, refit: train+val}"),
         r"hpc.final.epochs: refit train\+val has no validation split .* use epochs: best"),
    Case("search-without-validation", "launch", _launch("--dry-run", "train.validate=false"),
         r"train.validate: false leaves the search no validation metric to rank trials on \(hpc.objective: val_loss\)"),
    Case("final-folds-choice", "launch", _launch("--dry-run", "hpc.final={folds: some}"),
         r"config: hpc.final.folds: must be one of none, all \(got 'some'\)"),
    Case("final-study-name", "launch", _launch("--dry-run", "hpc.study=x/final"),
         r"--study: 'x/final': names ending in /final are the final runs' studies"),
    Case("sqlite-relative-path", "launch",
         lambda ws, d: [*_launch("--prepare-only")(ws, d), "--storage", "sqlite:///tmp/x/s.db"],
         r"--storage: SQLite path tmp/x/s.db is relative to this folder and tmp/x does not exist here; "
         r"an absolute path takes four slashes: sqlite:////tmp/x/s.db"),
]


def _snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (folders as 'dir')."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _main(tool: str) -> Callable[[list[str]], int]:
    if tool == "launch":
        from hpc import launch

        return launch.main
    if tool == "status":
        from hpc import status

        return status.main
    if tool == "report":
        from hpc import report

        return report.main
    return {"validate": validate.main, "synthetic": synthetic.main, "pastis": pastis.main,
            "convert": convert.main}[tool]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DUALSEG_STORAGE", raising=False)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    argv = case.setup(tmp_path, data)
    before = _snapshot(tmp_path)
    capsys.readouterr()
    rc = _main(case.tool)(argv)
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert rc == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.expect, lines[0]), lines[0]
    assert _snapshot(tmp_path) == before, "the failed command changed files"


def test_battery_size() -> None:
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


def test_reader_refuses_a_missing_chunk_and_band_directory(dataset: Path, tmp_path: Path) -> None:
    """The reader (not only validate) refuses lost data instead of returning zarr's fill value."""
    from dualseg.data.read import read_tile
    from dualseg.errors import InputError

    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    assert np.isfinite(read_tile(data / f"{TRAIN}.zarr").s2.bands["B02"]).any()
    _chunk(data, TRAIN, "s2/B02").unlink()
    with pytest.raises(InputError, match=rf"^tile {TRAIN}: band s2/B02: missing chunk c/0/0/0$"):
        read_tile(data / f"{TRAIN}.zarr")
    shutil.rmtree(data / f"{VAL}.zarr" / "s1" / "VH")
    with pytest.raises(InputError, match=rf"^tile {VAL}: band s1/VH: its directory s1/VH/ is missing"):
        read_tile(data / f"{VAL}.zarr")


def test_training_that_fails_before_its_first_epoch_leaves_no_run_folder(dataset: Path, tmp_path: Path) -> None:
    """Through the real CLI: a lost chunk in the val tile is one error line, no traceback, no run folder."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    _chunk(data, VAL, "s2/B02").unlink()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "dualseg.train", "--config", str(TINY), "--set", f"data.root={data}",
         "--set", f"train.scratch={scratch}", "--set", "data.patch_size=16", "--set", "data.synthetic=null",
         "--log-level", "ERROR"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert errors == [f"error: tile {VAL}: band s2/B02: missing chunk c/0/0/0"], r.stderr
    assert list(scratch.iterdir()) == []


def test_launcher_entry_point_refuses_a_lost_chunk(dataset: Path, tmp_path: Path) -> None:
    """``python hpc/launch.py --prepare-only`` as a user runs it: one line, exit 2, no study created."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    _chunk(data, TEST, "labels").unlink()
    env = {k: v for k, v in os.environ.items() if k != "DUALSEG_STORAGE"}
    r = subprocess.run(
        [sys.executable, "hpc/launch.py", "--config", str(TINY), "--executor", "local", "--prepare-only",
         "--scratch", str(tmp_path / "scratch"), "--set", f"data.root={data}"],
        capture_output=True, text=True, timeout=300, cwd=REPO, env=env,
    )
    assert r.returncode == 2 and r.stderr == f"error: tile {TEST}: array labels: missing chunk c/0/0\n", r.stderr
    assert not (tmp_path / "scratch").exists()


@pytest.mark.parametrize("content", [b"garbage\n", b"PK\x03\x04 truncated zip"], ids=["text", "truncated-zip"])
def test_train_evaluate_refuses_a_file_that_is_no_checkpoint(tmp_path: Path, content: bytes) -> None:
    """``python -m dualseg.train --evaluate FILE`` on a damaged file: bad input (exit 2, as its help says), one
    line naming the file, nothing written."""
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(content)
    before = _snapshot(tmp_path)
    r = subprocess.run([sys.executable, "-m", "dualseg.train", "--evaluate", str(bad), "--log-level", "ERROR"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 2 and r.stderr.startswith(f"error: --evaluate: cannot load {bad}: "), r.stderr
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
    assert _snapshot(tmp_path) == before


def _trial_states(db: Path, study: str | None = None) -> list[str]:
    import sqlite3

    try:
        with sqlite3.connect(db) as c:
            if study is None:
                return [r[0] for r in c.execute("SELECT state FROM trials ORDER BY number")]
            return [r[0] for r in c.execute("SELECT t.state FROM trials t JOIN studies s ON t.study_id = s.study_id "
                                            "WHERE s.study_name = ? ORDER BY t.number", (study,))]
    except sqlite3.Error:  # not created yet
        return []


def _local_launch(dataset: Path, tmp_path: Path, *extra: str) -> tuple[list[str], dict[str, str], Path]:
    """The tiny local launch the Ctrl-C tests interrupt: its command, environment and scratch."""
    data = tmp_path / "data"
    shutil.copytree(dataset, data)
    scratch = tmp_path / "scratch"
    cmd = [sys.executable, "hpc/launch.py", "--config", str(TINY), "--executor", "local", "--scratch", str(scratch),
           "--set", f"data.root={data}", "--set", "data.patch_size=16", "--set", "data.synthetic=null",
           "--set", "train.epochs=4", *extra]
    return cmd, {k: v for k, v in os.environ.items() if k != "DUALSEG_STORAGE"} | {"PYTHONPATH": str(REPO)}, scratch


def _ctrl_c_when(cmd: list[str], env: dict[str, str], ready: Callable[[], bool]) -> tuple[int, str, str]:
    """Run ``cmd`` in its own process group (a terminal's foreground job) and send the group SIGINT, as
    Ctrl-C does, once ``ready()``; (exit status, stdout, stderr)."""
    import signal
    import time

    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        deadline = time.monotonic() + 400
        while not ready():
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.1)
        os.killpg(p.pid, signal.SIGINT)
        out, err = p.communicate(timeout=300)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    return p.returncode, out, err


def test_ctrl_c_during_a_local_search_hands_the_trial_back_and_a_rerun_finishes(dataset: Path, tmp_path: Path) -> None:
    """Ctrl-C as a terminal sends it (SIGINT to the whole process group: launcher, submitit's controller and
    worker) while a trial trains: one line, exit 130, no trial left RUNNING, no worker left behind; the same
    command then finishes exactly the requested trials, the interrupted one continued, none failed."""
    cmd, env, scratch = _local_launch(dataset, tmp_path, "--trials", "2", "--study", "ctrl-c", "--no-eval")
    db = scratch / "ctrl-c" / "study.db"
    rc, out, err = _ctrl_c_when(cmd, env, lambda: "RUNNING" in _trial_states(db))
    assert rc == 130, (out, err)
    assert err == "interrupted: trial 0 handed back; rerun the same command to resume\n", err
    assert _trial_states(db) == ["WAITING"], "the trial is handed back, not left RUNNING or failed"
    controller = int(re.search(r"local workers: (\d+)", out)[1])  # type: ignore[index]
    with pytest.raises(ProcessLookupError):
        os.kill(controller, 0)
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _trial_states(db) == ["COMPLETE", "COMPLETE"], again.stdout


def test_ctrl_c_during_local_final_runs_hands_the_final_trial_back_and_a_rerun_finishes(dataset: Path,
                                                                                      tmp_path: Path) -> None:
    """Ctrl-C while the final runs train (the search is complete by then): their own workers are stopped and
    their trial handed back, not the finished search's; the same command is not refused as complete but
    resumes the final runs, which end with exactly their members and the results' final section."""
    cmd, env, scratch = _local_launch(dataset, tmp_path, "--trials", "1", "--study", "fin-c",
                                      "--set", "hpc.final={seeds: 2}")
    db = scratch / "fin-c" / "study.db"
    rc, out, err = _ctrl_c_when(cmd, env, lambda: "RUNNING" in _trial_states(db, "fin-c/final"))
    assert rc == 130, (out, err)
    assert re.fullmatch(r"interrupted: final trials? [\d, ]+ of study fin-c/final handed back; rerun the same "
                        r"command to resume", err.splitlines()[-1]), err
    assert "Traceback" not in err, err
    states = _trial_states(db, "fin-c/final")
    assert "RUNNING" not in states and "WAITING" in states and "FAIL" not in states, states
    assert _trial_states(db, "fin-c") == ["COMPLETE"]
    again = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert _trial_states(db, "fin-c") == ["COMPLETE"], "no search trial is added"
    assert _trial_states(db, "fin-c/final") == ["COMPLETE", "COMPLETE"], again.stdout
    final = json.loads((scratch / "fin-c" / "results" / "results.json").read_text())["final"]
    assert (final["planned"], final["complete"]) == (2, 2) and [m["seed"] for m in final["members"]] == [0, 1]
