"""Inputs are never outputs: ``python -m dualseg.predict`` refuses an ``--out`` that is, holds or lies in
an input, or holds what it did not write, before writing anything; a full disk is one line too.

Each refusal runs the real entry point in a subprocess and checks exit 2, stderr exactly one
``error:`` line, and every file of the test's folder (tiles, model, output area) byte-for-byte
unchanged. The model file is a freshly initialised tiny model (no training needed to test where
maps go); tile_000 is georeferenced, so a GeoTIFF is part of its map.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from dualseg.config import S1_BANDS, S2_BANDS, ModelConfig, SyntheticConfig
from dualseg.data.read import read_tile
from dualseg.data.synthetic import generate
from dualseg.data.write import write_tile
from dualseg.infer.modelfile import ModelFile, to_file
from dualseg.io import atomic_torch_save
from dualseg.model import build_model
from dualseg.predict.writers import MAP_FORMAT

REPO = Path(__file__).resolve().parents[2]
TRANSFORM = [10.0, 0.0, 699960.0, 0.0, -10.0, 5300040.0]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiles/`` (3 tiles of 16x16, tile_000 georeferenced) and ``model.pth`` (patch 16)."""
    base = tmp_path_factory.mktemp("outputs")
    tiles = base / "tiles"
    generate(tiles, SyntheticConfig(tiles=3, size=16, classes=3, s1_dates=3, s2_dates=3))
    tile = read_tile(tiles / "tile_000.zarr")
    tile.crs, tile.transform = "EPSG:32631", TRANSFORM
    write_tile(tiles / "tile_000.zarr", tile, overwrite=True)
    cfg = ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4)
    net = build_model(cfg, len(S1_BANDS), len(S2_BANDS), len(tile.class_names))
    m = ModelFile(weights=net.state_dict(), model=cfg, s1_bands=list(S1_BANDS), s2_bands=list(S2_BANDS),
                  mean={"s1": np.full(len(S1_BANDS), -12.0), "s2": np.full(len(S2_BANDS), 1000.0)},
                  std={"s1": np.full(len(S1_BANDS), 3.0), "s2": np.full(len(S2_BANDS), 500.0)},
                  class_names=list(tile.class_names), ignore_index=255, patch_size=16, amp=False)
    atomic_torch_save(to_file(m), base / "model.pth")
    return base


@pytest.fixture
def ws(source: Path, tmp_path: Path) -> Path:
    """The test's folder: a fresh copy of ``tiles/`` and ``model.pth``."""
    shutil.copytree(source / "tiles", tmp_path / "tiles")
    shutil.copy(source / "model.pth", tmp_path / "model.pth")
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with its content hash (folders as 'dir', links as their target)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = f"link:{os.readlink(p)}"
        else:
            out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def predict(ws: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualseg.predict", "--model", str(ws / "model.pth"),
                           "--tiles", str(ws / "tiles"), "--device", "cpu", *args],
                          capture_output=True, text=True, timeout=300, cwd=ws,
                          env={**os.environ, "PYTHONPATH": str(REPO)})


def _copy_tile_as_map(ws: Path) -> None:
    shutil.copytree(ws / "tiles" / "tile_000.zarr", ws / "maps" / "tile_000.zarr")


def _foreign_tif(ws: Path) -> None:
    (ws / "maps").mkdir()
    (ws / "maps" / "tile_000.tif").write_bytes(b"II*\x00 someone's own GeoTIFF")


def _model_in_out(ws: Path) -> None:
    (ws / "models").mkdir()
    shutil.move(ws / "model.pth", ws / "models" / "model.pth")
    (ws / "model.pth").symlink_to(ws / "models" / "model.pth")


# (id, setup(ws), --out and flags relative to ws, regex of the one error line)
CASES: list[tuple[str, Callable[[Path], object] | None, list[str], str]] = [
    ("out-is-tiles-overwrite", None, ["--out", "tiles", "--overwrite"],
     r"^error: --out: .*/tiles is the tiles folder --tiles .*/tiles$"),
    ("out-is-tiles", None, ["--out", "tiles"], r"^error: --out: .*/tiles is the tiles folder --tiles "),
    ("out-inside-tiles", None, ["--out", "tiles/maps"],
     r"^error: --out: .*/tiles/maps is inside the tiles folder --tiles "),
    ("out-inside-a-tile", None, ["--out", "tiles/tile_001.zarr", "--overwrite"],
     r"^error: --out: .*/tile_001.zarr is inside the tiles folder --tiles "),
    ("out-contains-tiles", None, ["--out", ".", "--overwrite"],
     r"^error: --out: .* contains the tiles folder --tiles "),
    ("out-links-to-tiles", lambda ws: (ws / "link").symlink_to(ws / "tiles"), ["--out", "link", "--overwrite"],
     r"^error: --out: .*/link is the tiles folder --tiles "),
    ("out-is-the-model", None, ["--out", "model.pth"], r"^error: --out: .*model.pth is the model file --model "),
    ("out-contains-the-model", _model_in_out, ["--out", "models"],
     r"^error: --out: .*/models contains the model file --model "),
    ("out-is-a-file", lambda ws: (ws / "notes.txt").write_text("mine"), ["--out", "notes.txt"],
     r"^error: --out: .*notes.txt is a file, not a folder$"),
    ("out-under-a-file", lambda ws: (ws / "notes.txt").write_text("mine"), ["--out", "notes.txt/maps"],
     r"^error: --out: .*notes.txt/maps is not a directory \(.*notes.txt is a file\)$"),
    ("tile-in-a-maps-place-overwrite", _copy_tile_as_map, ["--out", "maps", "--overwrite"],
     r"^error: --out: .*/maps/tile_000.zarr exists and is not a map written by dualseg.predict; it is never replaced"),
    ("tile-in-a-maps-place", _copy_tile_as_map, ["--out", "maps"],
     r"^error: --out: .*/maps/tile_000.zarr exists and is not a map written by dualseg.predict"),
    ("foreign-geotiff-in-a-maps-place", _foreign_tif, ["--out", "maps"],
     r"^error: --out: .*/maps/tile_000.tif exists and is not a GeoTIFF written by dualseg.predict"),
]


@pytest.mark.parametrize(("setup", "args", "expect"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_with_one_line_and_nothing_changed(ws: Path, setup: Callable[[Path], object] | None,
                                                   args: list[str], expect: str) -> None:
    if setup is not None:
        setup(ws)
    before = snapshot(ws)
    r = predict(ws, *[str(ws / a) if i and args[i - 1] == "--out" else a for i, a in enumerate(args)])
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and re.search(expect, lines[0]), r.stderr
    assert snapshot(ws) == before, "the refused command changed files"


def test_overwrite_replaces_only_its_own_maps(ws: Path) -> None:
    tiles = snapshot(ws / "tiles")
    r = predict(ws, "--out", str(ws / "maps"))
    assert r.returncode == 0 and "3 map(s) written" in r.stdout, r.stderr
    assert sorted(p.name for p in (ws / "maps").iterdir()) == [
        "tile_000.tif", "tile_000.tif.aux.xml", "tile_000.uncertainty.tif", "tile_000.zarr", "tile_001.zarr",
        "tile_002.zarr"]
    assert zarr.open_group(str(ws / "maps" / "tile_001.zarr"), mode="r").attrs["format"] == MAP_FORMAT
    r = predict(ws, "--out", str(ws / "maps"))
    assert r.returncode == 0 and "0 map(s) written, 3 already there" in r.stdout, r.stderr
    r = predict(ws, "--out", str(ws / "maps"), "--overwrite")
    assert r.returncode == 0 and "3 map(s) written" in r.stdout, r.stderr
    assert snapshot(ws / "tiles") == tiles


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path | None]:
    """A 64 KiB tmpfs filled to the last byte (``None`` where it cannot be mounted); unmounted after."""
    disk = tmp_path / "disk"
    disk.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(disk)], capture_output=True)
    if r.returncode != 0:
        yield None
        return
    try:
        with open(disk / "filler", "wb", buffering=0) as fh:
            with pytest.raises(OSError) as full:
                for _ in range(32):
                    fh.write(b"\0" * 4096)
            assert full.value.errno == errno.ENOSPC
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def test_a_full_disk_is_one_line_and_leaves_no_partial_output(
    ws: Path, tiny_disk: Path | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    tiles = snapshot(ws / "tiles")
    if tiny_disk is not None:  # a real ENOSPC, through the real entry point
        before = snapshot(tiny_disk)
        r = predict(ws, "--out", str(tiny_disk / "run" / "maps"))
        rc, err = r.returncode, r.stderr
        assert snapshot(tiny_disk) == before  # no temp file, no maps/ (nor run/) this run created
    else:  # no mount here: the writer fails as a full disk would, in-process
        from dualseg.predict import maps
        from dualseg.predict.__main__ import main

        def full(*args: object, **kwargs: object) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        monkeypatch.setattr(maps, "write_zarr", full)
        rc = main(["--model", str(ws / "model.pth"), "--tiles", str(ws / "tiles"), "--device", "cpu",
                   "--out", str(ws / "run" / "maps")])
        err = capsys.readouterr().err
        assert not (ws / "run").exists()
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and re.search(
        r"^error: --out: cannot write the map of tile tile_000 to .*/run/maps: No space left on device$", lines[0]), err
    assert snapshot(ws / "tiles") == tiles
