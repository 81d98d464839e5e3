"""Tile writer: write/read round trip, atomic writes, bad tiles refused, manifests adopted."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from dualseg.data.read import read_stream, read_tile
from dualseg.data.tile import open_tile
from dualseg.data.validate import validate_tile
from dualseg.data.write import consolidate, rewrite_manifest, write_tile
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
