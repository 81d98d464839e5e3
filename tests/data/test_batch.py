"""collate: time padding (batch maximum, time buckets, max_t) and the pad mask."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dualseg.data.batch import collate
from dualseg.data.dataset import TileDataset
from dualseg.data.prepare import prepare
from dualseg.data.tile import open_tile
from dualseg.data.write import write_tile
from dualseg.errors import InputError

MEAN = {"s1": np.array([-12.0, -15.0]), "s2": np.full(10, 1500.0)}
STD = {"s1": np.array([2.0, 2.0]), "s2": np.full(10, 800.0)}


def _tiles(tmp_path, data, n=2, **kw):
    return [open_tile(write_tile(tmp_path / f"t{i}.zarr", data.make_tile(seed=i, t2=3 + i, **kw))) for i in range(n)]


def _model_batch(items, **kw):
    """Loader items as the model sees them: collated, then prepared (on the CPU here)."""
    return prepare(collate(items, **kw))


def test_collate_pads_time_and_masks(tmp_path, data):
    infos = _tiles(tmp_path, data, n=2)  # s2: T=3 and T=4
    ds = TileDataset(infos, MEAN, STD, patch_size=16, train=False)
    items = [ds[0], ds[1]]
    raw = collate(items)  # stored pixels stay integers; real dates and clouds travel along
    assert raw["s2"].dtype == torch.uint16 and raw["s2_coef"].shape[:2] == (2, 10)
    assert raw["s2_present"].tolist() == [[True] * 3 + [False], [True] * 4]
    assert raw["s2_cloud"].shape == (2, 4, 16, 16) and not raw["s2_cloud"][0, 3].any()
    torch.testing.assert_close(raw["s2"][0, :, :3], items[0]["s2"], rtol=0, atol=0)
    b = _model_batch(items)
    one = [_model_batch([it]) for it in items]
    assert b["s2"].shape == (2, 10, 4, 16, 16) and b["s2_pad"].shape == (2, 4)
    assert b["s2_pad"][0, 3] and (b["s2"][0, :, 3] == 0).all() and b["s2_doy"][0, 3] == 0
    torch.testing.assert_close(b["s2"][0, :, :3], one[0]["s2"][0])
    assert torch.equal(b["s2_pad"][1], ~one[1]["s2_valid"][0])
    assert torch.equal(b["s2_pad"], ~b["s2_valid"])
    assert b["labels"].shape == (2, 16, 16)
    fixed = _model_batch(items, max_t=6)
    assert fixed["s1"].shape[2] == 6 and fixed["s2"].shape[2] == 6 and fixed["s1_pad"][:, 5].all()
    with pytest.raises(InputError, match=r"max_t=3 is smaller than a s1 series of T=5"):
        collate(items, max_t=3)


@pytest.mark.parametrize("buckets", [None, 1, 4, 8])
def test_time_buckets_pad_to_a_multiple_and_mask_the_padding(tmp_path, data, buckets):
    infos = _tiles(tmp_path, data, n=3)  # s1: T=5 each; s2: T=3, 4, 5
    ds = TileDataset(infos, MEAN, STD, patch_size=16, train=False)
    items = [ds[0], ds[1]]  # s2 batch maximum 4
    plain, b = _model_batch(items), _model_batch(items, time_buckets=buckets)
    for key, t in (("s1", 5), ("s2", 4)):
        want = t if buckets is None else -(-t // buckets) * buckets
        assert b[key].shape[2] == b[f"{key}_pad"].shape[1] == b[f"{key}_doy"].shape[1] == want
        torch.testing.assert_close(b[key][:, :, :t], plain[key], rtol=0, atol=0)  # same data, same place
        assert torch.equal(b[f"{key}_pad"][:, :t], plain[f"{key}_pad"])
        assert b[f"{key}_pad"][:, t:].all() and not b[f"{key}_valid"][:, t:].any()  # every added frame is padding
        assert (b[key][:, :, t:] == 0).all() and (b[f"{key}_doy"][:, t:] == 0).all()
    assert torch.equal(b["s2_pad"], ~b["s2_valid"])
    if buckets == 8:  # a batch of another maximum lands in the same bucket: one shape, not one per maximum
        assert _model_batch([ds[2]], time_buckets=8)["s2"].shape[2] == 8


@pytest.mark.parametrize("opts", [{}, {"temporal": "mean", "fusion": "early", "temporal_kernel": 3}])
def test_time_buckets_do_not_change_the_models_output(tmp_path, data, opts):
    """The model is padding-invariant (tests/model): the extra padded frames change no logit beyond 1e-5."""
    from dualseg.config import ModelConfig
    from dualseg.model import build_model

    infos = _tiles(tmp_path, data, n=2)
    ds = TileDataset(infos, MEAN, STD, patch_size=16, train=False)
    items = [ds[0], ds[1]]
    torch.manual_seed(0)
    model = build_model(ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4, **opts), 2, 10, 3).eval()
    keys = ("s1", "s2", "s1_pad", "s2_pad", "s1_doy", "s2_doy")
    with torch.no_grad():
        ref = model(**{k: v for k, v in _model_batch(items).items() if k in keys})
        for buckets in (4, 8, 16):
            out = model(**{k: v for k, v in _model_batch(items, time_buckets=buckets).items() if k in keys})
            assert (out - ref).abs().max().item() <= 1e-5
