"""Band statistics: per-tile partials (NaN/cloud aware), merging over tiles, packing, named errors."""

from __future__ import annotations

import numpy as np
import pytest

from dualseg.data.moments import Moments
from dualseg.data.stats import BandStats, Partial, compute_partial, pack, tile_partial, unpack
from dualseg.data.tile import open_tile
from dualseg.data.write import write_tile
from dualseg.errors import InputError


def test_pack_unpack_round_trip():
    p = Partial({"s1": Moments(*[np.arange(2.0) + i for i in range(3)]),
                 "s2": Moments(*[np.arange(3.0) * i for i in range(3)])}, np.array([5.0, 0, 7]))
    q = unpack(pack(p), {"s1": 2, "s2": 3}, 3)
    for k in ("s1", "s2"):
        for a in ("count", "mean", "m2"):
            np.testing.assert_array_equal(getattr(q.moments[k], a), getattr(p.moments[k], a))
    np.testing.assert_array_equal(q.class_counts, p.class_counts)
    with pytest.raises(InputError, match="ranks disagree"):
        unpack(pack(p), {"s1": 2, "s2": 4}, 3)


@pytest.mark.parametrize("version", [1, 2])
def test_tile_partial_is_cloud_and_nan_aware(tmp_path, data, version):
    """Version 2 is reduced from the stored integers: its reference is the exact dequantised
    values (DN * 0.01 dB in float64), not their float32 roundings."""
    tile = data.make_tile(t2=4)
    tile.nodata = -1.0
    tile.s1.bands["VH"][0, 0, :4] = -1.0
    write_tile(tmp_path / "a.zarr", tile, version=version)
    info = open_tile(tmp_path / "a.zarr")
    p = tile_partial(info, 3)
    for key, c, band in (("s2", 0, "B02"), ("s2", 6, "B08"), ("s1", 1, "VH")):
        x = getattr(tile, key).bands[band].astype(np.float64)
        if key == "s2":
            x = np.where(tile.s2.cloud, np.nan, x)
        x = np.where(x == -1.0, np.nan, x)
        if version == 2 and key == "s1":
            x = np.rint(x * 100) / 100
        assert p.moments[key].count[c] == np.isfinite(x).sum()
        np.testing.assert_allclose(p.moments[key].mean[c], np.nanmean(x), rtol=1e-12)
        np.testing.assert_allclose(p.moments[key].std[c], np.nanstd(x), rtol=1e-10)
    lab = tile.labels[tile.labels != 255]
    np.testing.assert_array_equal(p.class_counts, np.bincount(lab, minlength=3))


def test_partial_over_tiles_equals_concatenation(tmp_path, data):
    tiles = [data.make_tile(seed=s, t2=3 + s, cloud=False) for s in range(3)]
    infos = [open_tile(write_tile(tmp_path / f"t{s}.zarr", t)) for s, t in enumerate(tiles)]
    p = compute_partial(infos, 3, {"s1": 2, "s2": 10})
    allb = np.concatenate([t.s2.bands["B11"].ravel() for t in tiles]).astype(np.float64)
    np.testing.assert_allclose(p.moments["s2"].mean[8], np.nanmean(allb), rtol=1e-12)
    np.testing.assert_allclose(p.moments["s2"].std[8], np.nanstd(allb), rtol=1e-10)


def test_zero_variance_and_empty_band_are_named():
    bands = {"s1": ["VV", "VH"], "s2": ["B02"]}
    ok = Moments(np.array([4.0, 4.0]), np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    flat = Partial({"s1": ok, "s2": Moments(np.array([9.0]), np.array([3.0]), np.array([0.0]))}, np.ones(2))
    with pytest.raises(InputError, match=r"band s2/B02 has zero variance"):
        BandStats.from_partial(flat, bands)
    empty = Partial({"s1": ok, "s2": Moments.zeros(1)}, np.ones(2))
    with pytest.raises(InputError, match=r"band s2/B02 has no valid pixel"):
        BandStats.from_partial(empty, bands)


def test_row_windows_bound_memory_and_give_same_stats(tmp_path, data, monkeypatch):
    import dualseg.data.tile as tile_mod
    from dualseg.data.tile import row_windows

    tile = data.make_tile(h=20, w=12, t2=4)
    info = open_tile(write_tile(tmp_path / "a.zarr", tile))
    whole = tile_partial(info, 3)
    wins = list(row_windows(info, "s2", budget=10 * 4 * 12 * 4 * 3))  # 3 rows per window
    assert len(wins) == 7 and wins[-1][0] == slice(18, 20)
    monkeypatch.setattr(tile_mod, "WINDOW_BYTES", 10 * 4 * 12 * 4 * 3)
    split = tile_partial(info, 3)
    for key in ("s1", "s2"):
        np.testing.assert_array_equal(split.moments[key].count, whole.moments[key].count)
        np.testing.assert_allclose(split.moments[key].mean, whole.moments[key].mean, rtol=1e-12)
        np.testing.assert_allclose(split.moments[key].m2, whole.moments[key].m2, rtol=1e-10)


def test_band_hidden_only_by_clouds_is_not_an_error(tmp_path, data):
    tile = data.make_tile(t2=3)
    tile.s2.cloud[:] = True
    info = open_tile(write_tile(tmp_path / "a.zarr", tile))
    p = tile_partial(info, 3)
    assert (p.moments["s2"].count == 0).all() and (p.moments["s1"].count > 0).all()
    tile.s2.bands["B12"][:] = np.nan
    info = open_tile(write_tile(tmp_path / "b.zarr", tile))
    with pytest.raises(InputError, match=r"tile b: band s2/B12 is all NaN"):
        tile_partial(info, 3)
