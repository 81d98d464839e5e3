"""TileDataset items, determinism per (seed, epoch, index), augmentation, caching, DataLoader workers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from dualseg.data.batch import collate
from dualseg.data.dataset import TileDataset
from dualseg.data.prepare import prepare
from dualseg.data.tile import open_tile
from dualseg.data.write import write_tile
from dualseg.errors import InputError

MEAN = {"s1": np.array([-12.0, -15.0]), "s2": np.full(10, 1500.0)}
STD = {"s1": np.array([2.0, 2.0]), "s2": np.full(10, 800.0)}


def _prepared(item):
    """The model inputs of one item (a batch of one through the one prepare step), batch dim dropped."""
    return {k: v[0] for k, v in prepare(collate([item])).items()}


def _tiles(tmp_path, data, n=2, **kw):
    return [open_tile(write_tile(tmp_path / f"t{i}.zarr", data.make_tile(seed=i, t2=3 + i, **kw))) for i in range(n)]


def test_item_contract_and_normalisation(tmp_path, data):
    tile = data.make_tile(seed=0, t2=3)
    info = open_tile(write_tile(tmp_path / "t0.zarr", tile))
    ds = TileDataset([info], MEAN, STD, patch_size=16, train=False)
    assert len(ds) == 1
    raw = ds[0]  # stored pixels: the loader only crops and stacks
    assert raw["s1"].dtype == torch.int16 and raw["s2"].dtype == torch.uint16
    assert raw["s2_cloud"].shape == (3, 16, 16) and "s1_cloud" not in raw
    item = _prepared(raw)
    assert item["s1"].shape == (2, 5, 16, 16) and item["s1"].dtype == torch.float32
    assert item["s2"].shape == (10, 3, 16, 16)
    assert item["labels"].dtype == torch.int64 and item["labels"].shape == (16, 16)
    assert item["s1_doy"].dtype == torch.int64 and item["s2_valid"].dtype == torch.bool
    np.testing.assert_array_equal(item["labels"].numpy(), tile.labels)
    raw = tile.s2.bands["B03"]
    valid = ~tile.s2.cloud & np.isfinite(np.stack(list(tile.s2.bands.values()))).all(0)
    expect = np.where(valid, (raw - 1500.0) / 800.0, 0.0)
    np.testing.assert_allclose(item["s2"][1].numpy(), expect, rtol=1e-5, atol=1e-6)
    assert item["s2"][0, 0, 0, 0] == 0.0  # NaN pixel -> 0
    assert not torch.isnan(item["s2"]).any()


def test_fully_cloudy_date_is_invalid(tmp_path, data):
    tile = data.make_tile(t2=4)
    tile.s2.cloud[2] = True
    tile.s2.cloud[3] = False
    info = open_tile(write_tile(tmp_path / "t.zarr", tile))
    item = _prepared(TileDataset([info], MEAN, STD, patch_size=8, train=False)[0])
    assert item["s2_valid"].tolist() == [True, True, False, True]
    assert (item["s2"][:, 2] == 0).all()


def test_training_patches_deterministic_per_epoch(tmp_path, data):
    infos = _tiles(tmp_path, data)
    a = TileDataset(infos, MEAN, STD, patch_size=8, train=True, samples_per_tile=4, seed=3, augment=True)
    b = TileDataset(infos, MEAN, STD, patch_size=8, train=True, samples_per_tile=4, seed=3, augment=True, cache_mb=0)
    assert len(a) == 8
    for epoch in (0, 5):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in (7, 0, 3):  # any order, cached or read from zarr: same patch
            x, y = a[i], b[i]
            for k in x:
                assert torch.equal(x[k], y[k]), k
    a.set_epoch(0)
    first = [a.locate(i) for i in range(8)]
    a.set_epoch(1)
    assert [a.locate(i) for i in range(8)] != first
    assert {a.locate(i)[0] for i in range(4)} == {0} and {a.locate(i)[0] for i in range(4, 8)} == {1}
    c = TileDataset(infos, MEAN, STD, patch_size=8, train=True, samples_per_tile=4, seed=4)
    assert [c.locate(i)[1:3] for i in range(8)] != [t[1:3] for t in first]


def test_augmentation_is_identical_across_streams_and_labels(tmp_path, data):
    infos = _tiles(tmp_path, data, n=1)
    aug = TileDataset(infos, MEAN, STD, patch_size=8, train=True, samples_per_tile=16, augment=True)
    plain = TileDataset(infos, MEAN, STD, patch_size=8, train=True, samples_per_tile=16, augment=False)
    seen = set()
    for i in range(16):
        _, y, x, k, f = aug.locate(i)
        assert plain.locate(i)[1:3] == (y, x)
        seen.add((k, f))
        p, q = _prepared(plain[i]), _prepared(aug[i])

        def tf(t, k=k, f=f):  # bound now: called in this iteration only
            t = torch.rot90(t, k, dims=(-2, -1))
            return torch.flip(t, dims=(-1,)) if f else t

        for key in ("s1", "s2", "labels"):
            assert torch.equal(tf(p[key]), q[key]), key
    assert len(seen) > 2


def test_eval_grid_covers_every_pixel(tmp_path, data):
    info = open_tile(write_tile(tmp_path / "t.zarr", data.make_tile(h=20, w=13)))
    ds = TileDataset([info], MEAN, STD, patch_size=8, train=False)
    cover = np.zeros((20, 13), int)
    for i in range(len(ds)):
        _, y, x, k, f = ds.locate(i)
        assert k == f == 0
        cover[y : y + 8, x : x + 8] += 1
    assert (cover >= 1).all() and len(ds) == 3 * 2


def test_patch_larger_than_tile_and_empty_list(tmp_path, data):
    infos = _tiles(tmp_path, data, n=1)
    with pytest.raises(InputError, match=r"patch_size=32 is larger than tile t0 \(16x16\)"):
        TileDataset(infos, MEAN, STD, patch_size=32, train=True)
    with pytest.raises(InputError, match="empty tile list"):
        TileDataset([], MEAN, STD, patch_size=8, train=True)


def test_lru_cache_respects_budget(tmp_path, data):
    infos = _tiles(tmp_path, data, n=3)
    ds = TileDataset(infos, MEAN, STD, patch_size=8, train=False)
    one = max(ds.tile_bytes(i) for i in range(3))
    ds.cache_bytes = int(one * 1.5)
    for i in range(len(ds)):
        ds[i]
        assert ds._cached_bytes <= ds.cache_bytes and len(ds._cache) == 1
    assert not ds.preload()
    ds.cache_bytes = 10 * one
    assert ds.preload() and len(ds._cache) == 3


def test_dataloader_workers_and_distributed_sampler(tmp_path, data):
    infos = _tiles(tmp_path, data, n=2)
    ds = TileDataset(infos, MEAN, STD, patch_size=8, train=True, samples_per_tile=3, seed=1, augment=True, cache_mb=0)
    ds.set_epoch(2)
    ref = [ds[i]["s2"] for i in range(6)]
    seen = {}
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(2)
        order = list(sampler)
        loader = DataLoader(ds, batch_size=1, sampler=sampler, num_workers=2 if rank == 0 else 0, collate_fn=collate)
        for i, batch in zip(order, loader):
            seen[i] = batch["s2"][0]
    assert sorted(seen) == list(range(6))
    for i in range(6):
        t = ref[i].shape[1]
        torch.testing.assert_close(seen[i][:, :t], ref[i])
