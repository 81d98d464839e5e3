"""Tile format: opening a tile checks its structure, and every structural error names the tile and variable."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from dualseg.data.quant import QUANT
from dualseg.data.read import read_tile
from dualseg.data.tile import open_tile
from dualseg.data.validate import validate_tile
from dualseg.data.write import rewrite_manifest, write_tile
from dualseg.errors import InputError


def _edit(path, fn):
    """Corrupt a written tile the way a broken export would (bypassing the writer's checks)."""
    g = zarr.open_group(str(path), mode="a")
    fn(g)
    rewrite_manifest(path)  # as the broken exporter would have written it


@pytest.mark.parametrize(
    "corrupt, message",
    [
        (lambda g: g["s2"].__delitem__("B8A"), r"tile a: missing band s2/B8A"),
        (lambda g: g.__delitem__("s1"), r"tile a: missing group s1"),
        (lambda g: g["s1"].__delitem__("time"), r"tile a: missing array s1/time"),
        (lambda g: g["s2"].create_array("B11", data=np.zeros((4, 16, 8), "u2"), overwrite=True,
                                        attributes=QUANT["s2"].attrs()),
         r"tile a: s2/B11 has H,W=\(16, 8\)"),
        (lambda g: g["s2"].create_array("B12", data=np.zeros((6, 16, 16), "u2"), overwrite=True,
                                        attributes=QUANT["s2"].attrs()),
         r"tile a: s2/B12 has T=6 but s2/time has 4"),
        (lambda g: g["s1"].create_array("time", data=np.array([5, 3, 9, 10, 11], "i4"), overwrite=True),
         r"tile a: s1/time is not sorted"),
        (lambda g: g["s2"].create_array("time", data=np.array([5, 5, 9, 10], "i4"), overwrite=True),
         r"tile a: s2/time has a duplicate date 5"),
        (lambda g: g["s2"].create_array("B02", data=np.full((4, 16, 16), 0, "u2"), overwrite=True,
                                                 attributes=QUANT["s2"].attrs()),
         r"tile a: band s2/B02 is all NaN"),
        (lambda g: g.create_array("labels", data=np.full((16, 16), 7, "i2"), overwrite=True),
         r"tile a: labels contain \[7\] outside \[0, 3\)"),
        (lambda g: g.attrs.__setitem__("class_names", []), r"tile a: attribute class_names"),
        (lambda g: g.attrs.__setitem__("version", 99), r"tile a: format version 99 is newer"),
    ],
)
def test_validate_names_tile_and_variable(tmp_path, data, corrupt, message):
    write_tile(tmp_path / "a.zarr", data.make_tile())
    _edit(tmp_path / "a.zarr", corrupt)
    with pytest.raises(InputError, match=message):
        validate_tile(tmp_path / "a.zarr")


def test_missing_and_unreadable_tiles(tmp_path, data):
    with pytest.raises(InputError, match=r"tile nope: not found"):
        open_tile(tmp_path / "nope.zarr")
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match=r"tile junk: not a readable zarr group"):
        open_tile(tmp_path / "junk.zarr")
    write_tile(tmp_path / "a.zarr", data.make_tile())
    with pytest.raises(InputError, match=r"tile a: missing band s2/B99"):
        open_tile(tmp_path / "a.zarr", s2_bands=["B02", "B99"])
    # a truncated chunk: the manifest names it in validate, the reader names the array
    chunk = next((tmp_path / "a.zarr" / "s1" / "VV" / "c").rglob("*"))
    while chunk.is_dir():
        chunk = next(chunk.iterdir())
    chunk.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"tile a: band s1/VV: chunk c/0/0/0 differs from the manifest"):
        validate_tile(tmp_path / "a.zarr")
    with pytest.raises(InputError, match=r"tile a: s1/VV: unreadable data"):
        read_tile(tmp_path / "a.zarr")
    # a deleted chunk file would read as zarr's fill value: refused when the tile is opened
    chunk.unlink()
    with pytest.raises(InputError, match=r"tile a: band s1/VV: missing chunk c/0/0/0"):
        open_tile(tmp_path / "a.zarr")


def test_validate_ok_returns_info(tmp_path, data):
    write_tile(tmp_path / "a.zarr", data.make_tile(h=12, w=10, t1=3, t2=2))
    info = validate_tile(tmp_path / "a.zarr")
    assert (info.height, info.width, info.streams["s1"].t, info.streams["s2"].t) == (12, 10, 3, 2)
    assert info.streams["s2"].has_cloud and not info.streams["s1"].has_cloud
    shutil.rmtree(tmp_path / "a.zarr")
