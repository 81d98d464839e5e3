"""prepare: raw loader batches become exactly the model inputs the former CPU path produced.

The reference below is that path (``dualseg.data.inputs.normalise`` before normalisation moved to
the device): the dequantising reader, then numpy z-scoring and masking in float32.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualseg.data.batch import collate
from dualseg.data.dataset import TileDataset
from dualseg.data.prepare import prepare, prepare_stream
from dualseg.data.read import read_all
from dualseg.data.tile import open_tile
from dualseg.data.write import write_tile

MEAN = {"s1": np.array([-12.0, -15.0]), "s2": np.linspace(1400.0, 1600.0, 10)}
STD = {"s1": np.array([2.0, 2.5]), "s2": np.linspace(700.0, 900.0, 10)}


def _reference(info) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The CPU path before this module: (z (C,T,H,W), valid (T,H,W)) per stream of a whole tile."""
    streams, _ = read_all(info)  # float32, quantised bands dequantised, nodata -> NaN
    out = {}
    for key, (data, cloud) in streams.items():
        valid = np.isfinite(data).all(axis=0)
        if cloud is not None:
            valid &= ~cloud
        mean, std = MEAN[key].astype(np.float32), STD[key].astype(np.float32)
        z = (data - mean[:, None, None, None]) * (1.0 / std)[:, None, None, None]
        z[:, ~valid] = 0.0
        out[key] = z, valid
    return out


def _tile(data, version: int, tmp_path, name: str = "t"):
    tile = data.make_tile(seed=3, t2=4)
    tile.s1.bands["VH"][1, 4:6, :] = -9999.0  # the tile's declared nodata value
    tile.nodata = -9999.0
    tile.s2.cloud[2] = True  # a fully cloudy date: padding for the model
    if version == 1:
        tile.s2.bands["B05"][3, 7, 7] = np.inf
        tile.s2.bands["B11"][0, 9, :] = -np.inf
    return open_tile(write_tile(tmp_path / f"{name}.zarr", tile, version=version))


def _model_inputs(info, **kw):
    ds = TileDataset([info], MEAN, STD, patch_size=16, train=False, **kw)
    return prepare(collate([ds[0]]))


@pytest.mark.parametrize("version", [1, 2])
def test_model_inputs_and_masks_equal_the_cpu_path(tmp_path, data, version):
    info = _tile(data, version, tmp_path)
    ref = _reference(info)
    got = _model_inputs(info)
    for key in ("s1", "s2"):
        z, valid = ref[key]
        np.testing.assert_array_equal(got[f"{key}_mask"][0].numpy(), valid)
        assert np.array_equal(got[key][0].numpy().view(np.int32), z.view(np.int32)), key  # bit for bit
        assert torch.equal(got[f"{key}_pad"][0], torch.from_numpy(~valid.any(axis=(1, 2))))
    mask1 = got["s1_mask"][0]
    assert not mask1[1, 4:6].any() and mask1[1, 6:].all() and mask1[0].all()  # tile nodata: invalid
    assert got["s2_pad"][0].tolist() == [False, False, True, False]
    assert not got["s2_mask"][0, 0, 0, :3].any()  # NaN in one band masks the pixel in all bands


def test_version_1_and_2_copies_give_the_same_inputs(tmp_path, data):
    v1, v2 = (_model_inputs(_tile(data, v, tmp_path, f"v{v}")) for v in (1, 2))
    for key in ("s1", "s2"):  # the fixture's values lie on the version-2 grid; inf only in v1
        keep = v1[f"{key}_mask"] & v2[f"{key}_mask"]
        assert (v1[f"{key}_mask"] ^ v2[f"{key}_mask"]).sum() <= 2 * 16  # the v1-only infinities
        torch.testing.assert_close(v1[key] * keep[:, None], v2[key] * keep[:, None], rtol=1e-6, atol=1e-6)


def test_a_batch_mixing_versions_is_prepared_per_item(tmp_path, data):
    items = [TileDataset([_tile(data, v, tmp_path, f"v{v}")], MEAN, STD, patch_size=8, train=False)[0]
             for v in (2, 1)]
    mixed = collate(items)
    assert mixed["s2"].dtype == torch.float32  # integers are exact in float32
    both = prepare(mixed)
    for j, item in enumerate(items):
        one = prepare(collate([item]))
        for k in ("s1", "s2", "s1_mask", "s2_mask", "s1_pad", "s2_pad", "labels"):
            assert torch.equal(both[k][j], one[k][0]), k


def test_padding_dates_and_streams(tmp_path, data):
    info = _tile(data, 2, tmp_path)
    ds = TileDataset([info], MEAN, STD, patch_size=8, train=False)
    raw = collate([ds[0]], max_t=7)
    out = prepare(raw, streams="s2")
    assert "s1" not in out and out["s2"].shape[2] == 7
    assert out["s2_pad"][0, 4:].all() and (out["s2"][0, :, 4:] == 0).all() and not out["s2_mask"][0, 4:].any()
    z, valid = prepare_stream(raw["s2"], raw["s2_coef"])  # without present/cloud: raw zeros are nodata DNs
    assert not valid[0, 4:].any() and valid[0, 2].any()


def test_uint16_values_above_int16_range_dequantise_exactly():
    from dualseg.data.prepare import dequantise

    dn = torch.tensor([0, 1, 32767, 32768, 40000, 65535], dtype=torch.int32).to(torch.uint16).view(1, 1, 1, 1, 6)
    coef = torch.tensor([[[1.0, -1000.0, 0.0, float("inf"), 0.0, 1.0]]])
    x, rawf = dequantise(dn, coef)
    assert rawf.flatten().tolist() == [0.0, 1.0, 32767.0, 32768.0, 40000.0, 65535.0]
    assert x.flatten().tolist() == [-1000.0, -999.0, 31767.0, 31768.0, 39000.0, 64535.0]
