"""Tile format: write/read round trip, atomic writes, and every structural error named."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import zarr

from dualseg.data.read import read_stream, read_tile
from dualseg.data.tile import consolidate, open_tile, rewrite_manifest, write_tile
from dualseg.data.validate import validate_tile
from dualseg.errors import InputError


def test_round_trip_exact(tmp_path, data):
    tile = data.make_tile(t1=5, t2=4)
    write_tile(tmp_path / "a.zarr", tile)
    back = read_tile(tmp_path / "a.zarr")
    for key in ("s1", "s2"):
        src, dst = getattr(tile, key), getattr(back, key)
        assert list(dst.bands) == list(src.bands)
        for b in src.bands:
            np.testing.assert_array_equal(dst.bands[b], src.bands[b])  # NaN positions included
        np.testing.assert_array_equal(dst.time, src.time)
    np.testing.assert_array_equal(back.s2.cloud, tile.s2.cloud)
    assert back.s1.cloud is None
    np.testing.assert_array_equal(back.labels, tile.labels)
    assert back.class_names == tile.class_names and back.ignore_index == 255
    assert back.crs == "EPSG:32631" and back.transform == tile.transform


def test_chunks_span_time_and_window_read(tmp_path, data):
    tile = data.make_tile(h=20, w=24)
    write_tile(tmp_path / "a.zarr", tile, chunk_hw=8)
    arr = zarr.open_group(str(tmp_path / "a.zarr"), mode="r")["s2/B03"]
    assert arr.chunks == (4, 8, 8)
    info = open_tile(tmp_path / "a.zarr", s2_bands=["B08", "B03"])
    win, cloud = read_stream(info, "s2", (slice(3, 11), slice(5, 9)))
    assert win.shape == (2, 4, 8, 4)
    np.testing.assert_array_equal(win[1], tile.s2.bands["B03"][:, 3:11, 5:9])
    np.testing.assert_array_equal(cloud, tile.s2.cloud[:, 3:11, 5:9])


def test_declared_nodata_becomes_nan(tmp_path, data):
    tile = data.make_tile()
    tile.nodata = -9999.0
    tile.s1.bands["VV"][1, 2, 3] = -9999.0
    write_tile(tmp_path / "a.zarr", tile)
    assert np.isnan(read_tile(tmp_path / "a.zarr").s1.bands["VV"][1, 2, 3])


def test_overwrite_is_explicit_and_atomic(tmp_path, data):
    write_tile(tmp_path / "a.zarr", data.make_tile(seed=1))
    with pytest.raises(InputError, match="already exists"):
        write_tile(tmp_path / "a.zarr", data.make_tile(seed=2))
    bad = data.make_tile(seed=2)
    bad.s2.bands["B05"] = bad.s2.bands["B05"][:, :8]
    with pytest.raises(InputError, match="s2/B05"):
        write_tile(tmp_path / "a.zarr", bad, overwrite=True)
    # the failed write left the old tile intact and no temp directory behind
    assert read_tile(tmp_path / "a.zarr").labels.tolist() == data.make_tile(seed=1).labels.tolist()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zarr"]
    write_tile(tmp_path / "a.zarr", data.make_tile(seed=2), overwrite=True)
    assert read_tile(tmp_path / "a.zarr").labels.tolist() == data.make_tile(seed=2).labels.tolist()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda t: t.s2.bands.__setitem__("B04", t.s2.bands["B04"][:3]), r"s2/B04 has T=3 but s2/time has 4"),
        (lambda t: t.s1.bands.__setitem__("VH", t.s1.bands["VH"][:, :, :9]), r"s1/VH has H,W"),
        (lambda t: setattr(t.s2, "time", t.s2.time[::-1].copy()), r"s2/time is not sorted"),
        (lambda t: t.s1.time.__setitem__(2, t.s1.time[1]), r"s1/time has a duplicate date"),
        (lambda t: setattr(t, "labels", t.labels[:4]), r"labels shape"),
    ],
)
def test_writer_rejects_bad_tiles(tmp_path, data, mutate, message):
    tile = data.make_tile()
    mutate(tile)
    with pytest.raises(InputError, match=message):
        write_tile(tmp_path / "x.zarr", tile)
    assert not (tmp_path / "x.zarr").exists()


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
        (lambda g: g["s2"].create_array("B11", data=np.zeros((4, 16, 8), "f4"), overwrite=True),
         r"tile a: s2/B11 has H,W=\(16, 8\)"),
        (lambda g: g["s2"].create_array("B12", data=np.zeros((6, 16, 16), "f4"), overwrite=True),
         r"tile a: s2/B12 has T=6 but s2/time has 4"),
        (lambda g: g["s1"].create_array("time", data=np.array([5, 3, 9, 10, 11], "i4"), overwrite=True),
         r"tile a: s1/time is not sorted"),
        (lambda g: g["s2"].create_array("time", data=np.array([5, 5, 9, 10], "i4"), overwrite=True),
         r"tile a: s2/time has a duplicate date 5"),
        (lambda g: g["s2"].create_array("B02", data=np.full((4, 16, 16), np.nan, "f4"), overwrite=True),
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


def test_tile_without_manifest_is_checked_by_listing(tmp_path, data):
    """Tiles written before manifests: validate compares the store with each array's chunk grid."""
    path = tmp_path / "old.zarr"
    write_tile(path, data.make_tile())
    (path / "manifest.json").unlink()
    g = zarr.open_group(str(path), mode="a", use_consolidated=False)
    del g.attrs["manifest"]
    consolidate(path)
    assert validate_tile(path).name == "old"
    (path / "s2" / "cloud" / "c" / "0" / "0" / "0").unlink()
    with pytest.raises(InputError, match=r"^tile old: array s2/cloud: missing chunk c/0/0/0$"):
        validate_tile(path)
    rewrite_manifest(path)  # adopting it as it is: the lost chunk becomes explicit fill values
    assert validate_tile(path).name == "old"
    assert not read_tile(path).s2.cloud.any()
