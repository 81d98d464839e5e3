"""Tile-major streaming: exact sharding, determinism, bounded buffer, resume, and same items as random access."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from dualseg.data.batch import collate
from dualseg.data.dataset import TileDataset
from dualseg.data.stream import (
    StreamSampler,
    UnitBuffer,
    interleave,
    lane_sizes,
    rank_order,
)
from dualseg.data.tile import open_tile
from dualseg.data.write import write_tile
from dualseg.errors import InputError
from dualseg.train.loaders import train_loader

MEAN = {"s1": np.array([-12.0, -15.0]), "s2": np.full(10, 1500.0)}
STD = {"s1": np.array([2.0, 2.0]), "s2": np.full(10, 800.0)}


def _units(n_units: int, per: int) -> list[list[int]]:
    return [list(range(u * per, (u + 1) * per)) for u in range(n_units)]


@pytest.mark.parametrize("world,lanes,slots,batch", [(1, 1, 1, 4), (2, 3, 2, 4), (3, 2, 4, 5), (4, 4, 3, 1)])
def test_every_item_once_per_epoch_across_ranks_and_lanes(world, lanes, slots, batch):
    units = _units(7, 5)  # 35 items: not a multiple of any world size > 1
    orders = [rank_order(units, seed=1, epoch=2, world_size=world, rank=r, batch_size=batch, lanes=lanes, slots=slots)
              for r in range(world)]
    per = -(-35 // world)
    assert all(len(o) == per for o in orders)
    counts = collections.Counter(k[0] for o in orders for k in o)
    assert set(counts) == set(range(35))
    assert sum(c - 1 for c in counts.values()) == per * world - 35  # only DistributedSampler-style padding
    again = rank_order(units, seed=1, epoch=2, world_size=world, rank=0, batch_size=batch, lanes=lanes, slots=slots)
    assert again == orders[0]
    other = rank_order(units, seed=1, epoch=3, world_size=world, rank=0, batch_size=batch, lanes=lanes, slots=slots)
    assert [k[0] for k in other] != [k[0] for k in orders[0]]


def test_lanes_follow_batches_and_buffer_stays_bounded():
    units, batch, lanes, slots = _units(12, 6), 4, 3, 2
    order = rank_order(units, seed=0, epoch=0, world_size=1, rank=0, batch_size=batch, lanes=lanes, slots=slots)
    unit_of = {i: u for u, items in enumerate(units) for i in items}
    per_lane: dict[int, list] = collections.defaultdict(list)
    for p, key in enumerate(order):
        per_lane[(p // batch) % lanes].append(key)
    assert sorted(map(len, per_lane.values())) == sorted(lane_sizes(len(order), batch, lanes))
    seen_in = collections.defaultdict(set)
    for lane, keys in per_lane.items():
        held: set[int] = set()
        for index, release, _ in keys:  # replay the lane as a worker sees it
            held.add(unit_of[index])
            assert len(held) <= slots
            seen_in[unit_of[index]].add(lane)
            if release:
                held.discard(unit_of[index])
        assert not held  # every unit released by its last item
    # a unit spans two lanes only where the rank's block is cut between lanes
    assert sum(len(v) - 1 for v in seen_in.values()) <= lanes - 1
    # the shuffle buffer interleaves: a batch draws from more than one tile
    assert any(len({unit_of[k[0]] for k in order[b : b + batch]}) > 1 for b in range(0, len(order), batch))


def test_interleave_hints_the_next_unit_loaded():
    keys = interleave([[0, 1], [2, 3, 4], [5], [6, 7]], slots=2, rng=np.random.default_rng(0))
    assert sorted(k[0] for k in keys) == list(range(8))
    firsts = [k for k in keys if k[2] >= 0]
    load_order = [k[0] for k in keys if k[0] in (0, 2, 5, 6)]  # first item of each run, as loaded
    assert [k[2] for k in firsts] == load_order[1:]
    assert sum(k[1] for k in keys) == 4


def _tiles(tmp_path, data, n=4, h=16):
    return [open_tile(write_tile(tmp_path / f"t{i}.zarr", data.make_tile(h=h, w=h, seed=i, t2=3 + i % 2)))
            for i in range(n)]


def _ds(infos, **kw):
    base = {"patch_size": 8, "train": True, "samples_per_tile": 5, "seed": 3, "augment": True, "cache_mb": 0}
    return TileDataset(infos, MEAN, STD, **{**base, **kw})


def _same(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("h", [16, 48])  # 48: tiles larger than half the buffer stream as blocks
def test_streamed_items_equal_random_access(tmp_path, data, h):
    infos = _tiles(tmp_path, data, h=h)
    ds, ref = _ds(infos, buffer_mb=0.2), _ds(infos)
    assert ds.streaming and not ref.streaming
    units, slots = ds.stream_plan()
    assert (len(units) > len(infos)) == (h == 48) and slots >= 1
    ds.set_epoch(1)
    ref.set_epoch(1)
    sampler = StreamSampler(ds, num_replicas=1, rank=0, seed=0, batch_size=4, lanes=1)
    sampler.set_epoch(1)
    limit = max(ds.buffer_bytes, 2 * max(ds.unit_bytes(ds.unit_of(u[0])) for u in units))
    for key in sampler:
        _same(ds[key], ref[key[0]])
        assert sum(ds._buffer._sizes.values()) <= limit  # bounded, whatever the dataset size
    assert len(ds._buffer) == 0  # every unit released at its last patch


def test_loader_with_workers_resumes_exactly(tmp_path, data):
    infos = _tiles(tmp_path, data)
    ds = _ds(infos, buffer_mb=0.2)
    kw = {"batch_size": 3, "rank": 0, "world_size": 1, "seed": 5, "num_workers": 2, "pin_memory": False, "max_t": None}
    loader, sampler, _ = train_loader(ds, collate, **kw)
    assert isinstance(sampler.sampler, StreamSampler)
    ds.set_epoch(2)
    sampler.set_epoch(2)
    full = list(loader)
    assert sum(b["labels"].shape[0] for b in full) == len(ds)
    # the 2 workers deliver exactly the sampler's order: the same batches as the main process reading it
    inline = DataLoader(ds, batch_size=3, sampler=sampler, collate_fn=collate, num_workers=0)
    for a, b in zip(inline, full, strict=True):
        _same(a, b)
    sampler.skip = 2 * 3  # as the trainer does after 2 steps
    rest = list(loader)
    assert len(rest) == len(full) - 2
    for a, b in zip(rest, full[2:]):
        _same(a, b)


def test_prefetched_unit_error_names_the_tile(tmp_path, data):
    infos = _tiles(tmp_path, data, n=3)
    ds = _ds(infos, buffer_mb=0.2)
    for chunk in (infos[1].path / "s2" / "B04" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    keys = list(StreamSampler(ds, num_replicas=1, rank=0, seed=0, batch_size=2, lanes=1))
    with pytest.raises(InputError, match="tile t1: s2/B04"):
        for key in keys:
            ds[key]


def test_unit_buffer_evicts_oldest_and_resets_after_fork_state():
    buf = UnitBuffer(capacity=100)
    for u in range(3):
        buf.get(u, 40, lambda u=u: u)
    assert len(buf) == 2  # 120 bytes > 100: the oldest went
    buf.prefetch(9, 40, lambda: "nine")
    assert buf.get(9, 40, lambda: pytest.fail("prefetched unit loaded again")) == "nine"
    buf._pid = -1  # as seen from a forked child: the parent's units and threads are not reused
    assert buf.get(1, 40, lambda: "fresh") == "fresh" and len(buf) == 1
