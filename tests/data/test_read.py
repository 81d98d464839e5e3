"""Readers: one concurrent zarr round trip per tile, same pixels as per-stream reads, named errors."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from dualseg.data.read import read_all, read_labels, read_stream, read_tile
from dualseg.data.tile import open_tile
from dualseg.data.write import write_tile
from dualseg.errors import InputError


@pytest.mark.parametrize("codec", ["none", "zstd"])
def test_codecs_round_trip_and_read_all(tmp_path, data, codec):
    tile = data.make_tile(h=20, w=12, t2=3)
    info = open_tile(write_tile(tmp_path / "a.zarr", tile, codec=codec, chunk_hw=8))
    back = read_tile(tmp_path / "a.zarr")
    for band, arr in tile.s2.bands.items():
        np.testing.assert_array_equal(back.s2.bands[band], arr)
    win = (slice(3, 17), slice(2, 9))
    streams, labels = read_all(info, win)
    for key in ("s1", "s2"):
        data_, cloud = read_stream(info, key, win)
        np.testing.assert_array_equal(streams[key][0], data_)
        assert (cloud is None) == (streams[key][1] is None)
    np.testing.assert_array_equal(streams["s2"][0][1], tile.s2.bands["B03"][:, 3:17, 2:9])
    np.testing.assert_array_equal(streams["s2"][1], tile.s2.cloud[:, 3:17, 2:9])
    comp = zarr.open_array(tmp_path / "a.zarr" / "s2" / "B02", mode="r").compressors
    assert (comp == ()) if codec == "none" else (comp[0].cname.value == codec)
    np.testing.assert_array_equal(labels, read_labels(info, win))
    with pytest.raises(InputError, match=r"tile codec: unknown value 'gzip'"):
        write_tile(tmp_path / "b.zarr", tile, codec="gzip")
    assert not (tmp_path / "b.zarr").exists()


def test_read_all_names_the_corrupt_array(tmp_path, data):
    info = open_tile(write_tile(tmp_path / "a.zarr", data.make_tile()))
    chunk = next(p for p in (tmp_path / "a.zarr" / "s2" / "B05" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"tile a: s2/B05: unreadable data"):
        read_all(info)
