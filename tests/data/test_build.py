"""build_data end to end: stats/weights from train tiles only, caching, checks, synthetic, DDP merge."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import zarr

from dualseg.config import SyntheticConfig
from dualseg.data import build_data, read_tile
from dualseg.data.build import AUTO_WORKERS_MAX, loader_workers
from dualseg.data.prepare import prepare
from dualseg.data.quant import QUANT
from dualseg.data.write import rewrite_manifest
from dualseg.errors import InputError


def _manual_stats(root, names, key, band):
    vals, counts = [], np.zeros(3)
    for n in names:
        t = read_tile(root / f"{n}.zarr")
        x = getattr(t, key).bands[band].astype(np.float64)
        if key == "s2":
            x = np.where(t.s2.cloud, np.nan, x)
        vals.append(x.ravel())
        lab = t.labels[t.labels != 255]
        counts += np.bincount(lab, minlength=3)
    v = np.concatenate(vals)
    return np.nanmean(v), np.nanstd(v), counts


def test_bundle_contract_and_train_only_stats(tmp_path, data):
    root = data.write_root(tmp_path, n=5)
    b = build_data(data.cfg(root), splits=("train", "val", "test"), cache=False)
    assert set(b.datasets) == {"train", "val", "test"}
    assert (b.num_classes, b.class_names, b.ignore_index) == (3, ["c0", "c1", "c2"], 255)
    assert (b.s1_channels, b.s2_channels) == (2, 10)
    assert len(b.datasets["train"]) == 3 * 3 and len(b.datasets["val"]) == 4
    mean, std, counts = _manual_stats(root, ["t0", "t1", "t2"], "s2", "B8A")
    np.testing.assert_allclose(b.stats.mean["s2"][7], mean, rtol=1e-12)
    np.testing.assert_allclose(b.stats.std["s2"][7], std, rtol=1e-10)
    np.testing.assert_array_equal(b.stats.class_counts, counts)
    med = np.median(counts / counts.sum()) / (counts / counts.sum())
    torch.testing.assert_close(b.class_weights, torch.tensor(med, dtype=torch.float32))
    assert b.max_t == {"s1": 6, "s2": 5}
    batch = prepare(b.collate_fn([b.datasets["train"][i] for i in range(4)]))
    assert batch["s1"].shape[:3] == (4, 2, 5) and batch["s2_pad"].dtype == torch.bool
    json.dumps(b.stats.to_dict())


def test_stats_cache_is_keyed_by_content(tmp_path, data, monkeypatch):
    root = data.write_root(tmp_path, n=4)
    first = build_data(data.cfg(root))
    assert len(list((root / ".dualseg-stats").glob("*.json"))) == 1

    def no_compute(*a, **k):
        raise AssertionError("statistics recomputed")

    with monkeypatch.context() as m:  # an unchanged dataset is a cache hit: nothing recomputed
        m.setattr("dualseg.data.build.compute_partial", no_compute)
        again = build_data(data.cfg(root))
        np.testing.assert_array_equal(again.stats.std["s2"], first.stats.std["s2"])
        with pytest.raises(AssertionError, match="recomputed"):  # rebuild ignores the entry
            build_data(data.cfg(root, stats_cache="rebuild"))
    # rewrite one band of a train tile in place (metadata untouched): the key changes
    g = zarr.open_group(str(root / "t0.zarr"), mode="a")
    g["s2"]["B02"][...] = np.asarray(g["s2"]["B02"][...]) * 10
    changed = build_data(data.cfg(root))
    assert changed.stats.mean["s2"][0] > 2 * first.stats.mean["s2"][0]
    assert len(list((root / ".dualseg-stats").glob("*.json"))) == 2
    # stats_cache=off neither reads nor writes an entry
    off = build_data(data.cfg(root, train_tiles=["t1"], val_tiles=["t2"], stats_cache="off"))
    assert len(list((root / ".dualseg-stats").glob("*.json"))) == 2
    assert not np.array_equal(off.stats.mean["s2"], first.stats.mean["s2"])
    for chunk in (root / "t0.zarr" / "s2" / "B02" / "c").rglob("*"):
        if chunk.is_file():
            chunk.write_bytes(b"garbage")
    with pytest.raises(InputError, match=r"tile t0: s2/B02: unreadable data"):
        build_data(data.cfg(root))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda g: g.create_array("labels", data=np.full((16, 16), 9, "i2"), overwrite=True,
                                  attributes={"ignore_index": 255}), r"tile t1: labels contain \[9\]"),
        (lambda g: g["s1"].create_array("VH", data=np.full((5, 16, 16), QUANT["s1"].nodata, "i2"), overwrite=True,
                                                 attributes=QUANT["s1"].attrs()),
         r"tile t1: band s1/VH is all NaN"),
        (lambda g: g.attrs.__setitem__("class_names", ["x", "y", "z"]), r"tile t1: class_names differ from tile t0"),
        (lambda g: g["s2"].__delitem__("B06"), r"tile t1: missing band s2/B06"),
    ],
)
def test_bad_train_tile_is_named(tmp_path, data, edit, message):
    root = data.write_root(tmp_path, n=4)
    g = zarr.open_group(str(root / "t1.zarr"), mode="a")
    edit(g)
    rewrite_manifest(root / "t1.zarr")
    with pytest.raises(InputError, match=message):
        build_data(data.cfg(root), cache=False)


def test_option_errors(tmp_path, data):
    root = data.write_root(tmp_path, n=4)
    with pytest.raises(InputError, match=r"tile t\d: s\d has T=\d > data.max_t=3"):
        build_data(data.cfg(root, max_t=3))
    with pytest.raises(InputError, match=r"config: data.time_buckets: must be >= 1 \(got 0\)"):
        build_data(data.cfg(root, time_buckets=0))  # checked where the option is declared (DataConfig)
    with pytest.raises(InputError, match=r"data.time_buckets and data.max_t both set"):
        build_data(data.cfg(root, time_buckets=4, max_t=8))
    with pytest.raises(InputError, match=r"patch_size=17 is larger than tile t0"):
        build_data(data.cfg(root, patch_size=17))
    with pytest.raises(InputError, match=r"unknown method 'log'"):
        build_data(data.cfg(root, class_weighting="log"))
    with pytest.raises(InputError, match=r"missing band s2/B13"):
        build_data(data.cfg(root, s2_bands=["B02", "B13"]))
    with pytest.raises(InputError, match=r"data.root .* does not exist"):
        build_data(data.cfg(tmp_path / "nowhere", train_tiles=["a"], val_tiles=["b"]))


def test_synthetic_generated_on_demand(tmp_path, data):
    root = tmp_path / "syn"
    cfg = data.cfg(root, synthetic=SyntheticConfig(tiles=4, size=16, classes=3, s1_dates=4, s2_dates=4))
    b = build_data(cfg, splits=("train", "val", "test"))
    assert b.num_classes == 4 and b.class_names[0] == "background"
    assert (root / "splits.json").is_file() and b.tiles["test"] == ["tile_003"]
    mtime = (root / "splits.json").stat().st_mtime_ns
    build_data(cfg)  # already complete: not regenerated
    assert (root / "splits.json").stat().st_mtime_ns == mtime
    foreign = data.write_root(tmp_path / "real", n=3)
    (foreign / "splits.json").unlink()
    with pytest.raises(InputError, match="holds tiles but no splits.json"):
        build_data(data.cfg(foreign, synthetic=SyntheticConfig(tiles=3, size=16)))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, good: str, bad: str, out: str) -> None:
    """One rank: build on ``good`` (stats merged over ranks), then on ``bad`` (rank 1's shard fails)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    calls = []

    def gather(a: np.ndarray) -> list[np.ndarray]:
        calls.append(a.size)
        t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64))
        parts = [torch.empty_like(t) for _ in range(world)]
        dist.all_gather(parts, t)
        return [p.numpy() for p in parts]

    from dualseg.config import DataConfig

    b = build_data(DataConfig(root=good, patch_size=8, augment=False), gather=gather)
    np.save(f"{out}/rank{rank}.npy",
            np.concatenate([b.stats.mean["s2"], b.stats.std["s2"], b.stats.class_counts, calls]))
    try:
        build_data(DataConfig(root=bad, patch_size=8), gather=gather, cache=False)
        msg = "no error"
    except InputError as exc:
        msg = str(exc)
    with open(f"{out}/rank{rank}.txt", "w") as fh:
        fh.write(msg)
    dist.destroy_process_group()


def test_ddp_stats_merge_and_a_failing_rank_does_not_hang_the_others(tmp_path, data):
    good = data.write_root(tmp_path / "good", n=6, splits={"train": ["t0", "t1", "t2", "t3", "t4"], "val": ["t5"]})
    bad = data.write_root(tmp_path / "bad", n=5, splits={"train": ["t0", "t1", "t2", "t3"], "val": ["t4"]})
    g = zarr.open_group(str(bad / "t1.zarr"), mode="a")  # t1 is in rank 1's shard (tiles 1::2)
    data.put_band(g, "s2", "B04", np.full((g["s2/time"].shape[0], 16, 16), np.nan))
    rewrite_manifest(bad / "t1.zarr")
    args = (2, _free_port(), str(good), str(bad), str(tmp_path))
    ctx = mp.start_processes(_rank_main, args=args, nprocs=2, join=False, start_method="fork")  # fork: no re-import
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("ranks hung in the statistics gather")
    single = build_data(data.cfg(good), cache=False)
    want = np.concatenate([single.stats.mean["s2"], single.stats.std["s2"], single.stats.class_counts])
    for r in range(2):
        got = np.load(tmp_path / f"rank{r}.npy")
        np.testing.assert_allclose(got[: want.size], want, rtol=1e-12)
        assert got[want.size :].tolist() == [1, 3 * 12 + 3 + 1]  # cache flag, then one packed gather (+ status)
    assert (tmp_path / "rank1.txt").read_text() == "tile t1: band s2/B04 is all NaN/nodata"
    expected = "stats: rank 1 failed reading its train tiles (its log names the tile)"
    assert (tmp_path / "rank0.txt").read_text() == expected


def test_bad_label_in_val_tile_fails_at_build(tmp_path, data):
    root = data.write_root(tmp_path, n=4)  # t2 = val
    g = zarr.open_group(str(root / "t2.zarr"), mode="a")
    g.create_array("labels", data=np.full((16, 16), -3, "i2"), overwrite=True, attributes={"ignore_index": 255})
    rewrite_manifest(root / "t2.zarr")
    with pytest.raises(InputError, match=r"tile t2: labels contain \[-3\]"):
        build_data(data.cfg(root))


def test_existing_synthetic_data_must_match_config(tmp_path, data):
    root = tmp_path / "syn"
    build_data(data.cfg(root, synthetic=SyntheticConfig(tiles=3, size=16, classes=2)))
    with pytest.raises(InputError, match=r"data.synthetic.classes=3 but .* generated with classes=2"):
        build_data(data.cfg(root, synthetic=SyntheticConfig(tiles=3, size=16, classes=3)))


def test_preload_with_workers_shares_cache(tmp_path, data):
    root = data.write_root(tmp_path, n=4)
    b = build_data(data.cfg(root, num_workers=2))
    ds = b.datasets["train"]
    assert len(ds._cache) == 2  # both train tiles, loaded before any item was asked for
    ref = build_data(data.cfg(root, cache_mb=0)).datasets["train"]
    for i in range(len(ds)):
        for k, v in ds[i].items():
            assert torch.equal(v, ref[i][k]), k


@pytest.mark.parametrize("damage, message", [
    ("nan", r"^tile t3: band s2/B05 is all NaN/nodata$"),
    ("corrupt", r"^tile t3: s2/B05: unreadable data"),
    ("missing", r"^tile t3: band s2/B05: missing chunk c/0/0/0$"),
])
def test_bad_val_tile_fails_before_training(tmp_path, data, damage, message):
    """Val tiles get the same value checks as train tiles, before the first epoch (not after it)."""
    root = data.write_root(tmp_path, n=5)  # train t0-t2, val t3
    chunk = root / "t3.zarr" / "s2" / "B05" / "c" / "0" / "0" / "0"
    if damage == "nan":
        g = zarr.open_group(str(root / "t3.zarr"), mode="a")
        g["s2"]["B05"][...] = QUANT["s2"].nodata  # all missing
        rewrite_manifest(root / "t3.zarr")
    elif damage == "corrupt":
        chunk.write_bytes(b"garbage")
    else:
        chunk.unlink()
    with pytest.raises(InputError, match=message):
        build_data(data.cfg(root))


_UNDER_MASK = """
import json, os, sys
os.sched_setaffinity(0, json.loads(sys.argv[1]))  # a real, smaller mask, as a scheduler binds it
from dualseg.data.build import loader_workers, usable_cpus
print(json.dumps([usable_cpus(), loader_workers("auto"), loader_workers(0), loader_workers(5)]))
"""


@pytest.mark.parametrize("take", ["one", "all"])
def test_auto_workers_follow_the_affinity_mask_of_the_process(take):
    """"auto" counts the CPUs the process may run on (its affinity mask), less one for the process itself;
    a number is never changed, even when it does not fit (the launcher refuses that one)."""
    have = sorted(os.sched_getaffinity(0))
    mask = have[:1] if take == "one" else have
    r = subprocess.run([sys.executable, "-c", _UNDER_MASK, json.dumps(mask)], capture_output=True, text=True,
                       timeout=120, check=True)
    cpus, auto, zero, five = json.loads(r.stdout)
    assert cpus == len(mask)
    assert auto == min(len(mask) - 1, AUTO_WORKERS_MAX) and (take == "all" or auto == 0)
    assert (zero, five) == (0, 5)


@pytest.mark.parametrize("cpus, workers", [(1, 0), (2, 1), (4, 3), (9, 8), (128, AUTO_WORKERS_MAX)])
def test_auto_workers_leave_one_cpu_to_the_rank_and_are_capped(cpus, workers):
    assert AUTO_WORKERS_MAX == 8
    assert loader_workers("auto", cpus=cpus) == workers
    assert loader_workers(3, cpus=cpus) == 3


def test_auto_workers_preload_like_an_explicit_count(tmp_path, data):
    """build_data preloads before the DataLoader forks whenever the resolved count is > 0."""
    root = data.write_root(tmp_path, n=4)
    ds = build_data(data.cfg(root, num_workers="auto")).datasets["train"]
    assert len(ds._cache) == (2 if loader_workers("auto") > 0 else 0)
    lazy = build_data(data.cfg(root, num_workers=0)).datasets["train"]
    assert len(lazy._cache) == 0
