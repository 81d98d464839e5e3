"""``build_data``: from a :class:`DataConfig` to ready datasets, normalisation stats and class weights.

Checks every tile's structure and chunk files up front, and the values of val/test tiles (a
missing band, a lost chunk or an all-NaN val band fails before the first epoch, naming the tile),
computes band statistics and label counts over the train tiles in one sharded pass merged
with a single ``gather`` (or loads them from the cache keyed by the train-tile fingerprint), and
builds one :class:`TileDataset` per requested split.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dualseg.config import DataConfig
from dualseg.data.backend import get_xp, run_stats
from dualseg.data.batch import collate
from dualseg.data.dataset import TileDataset
from dualseg.data.moments import Moments
from dualseg.data.read import read_labels
from dualseg.data.splits import resolve_splits
from dualseg.data.stats import (
    BandStats,
    Gather,
    Partial,
    cache_path,
    compute_partial,
    fingerprint,
    load_cached,
    pack,
    save_cached,
    unpack,
)
from dualseg.data.tile import STREAMS, TileInfo, open_tile, tile_path
from dualseg.data.validate import check_band_values, check_labels
from dualseg.data.weights import compute_class_weights
from dualseg.errors import InputError

log = logging.getLogger("dualseg.data")

# "auto" loader workers stop here: a model this small gains little beyond it, and a rank that sees a whole
# unbound node (task/none, the local executor) must not start one worker per core of it
AUTO_WORKERS_MAX = 8


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, which is what the scheduler bound (not what was asked)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no affinity masks on this OS
        return os.cpu_count() or 1


def loader_workers(setting: int | Literal["auto"], cpus: int | None = None) -> int:
    """``data.num_workers`` as a count, resolved where the loader runs (the one place "auto" is read).

    A number stays as it is. "auto" is one worker per CPU of ``cpus`` (default :func:`usable_cpus`) less one
    for the process itself, at most :data:`AUTO_WORKERS_MAX`: 0 on one CPU, where the process loads its
    own batches.
    """
    if setting != "auto":
        return setting
    return max(0, min((usable_cpus() if cpus is None else cpus) - 1, AUTO_WORKERS_MAX))


@dataclass
class DataBundle:
    """Everything the trainer needs from the data layer."""

    datasets: dict[str, TileDataset]
    num_classes: int
    class_names: list[str]
    ignore_index: int
    s1_channels: int
    s2_channels: int
    class_weights: torch.Tensor
    stats: BandStats
    collate_fn: Callable[[list[dict[str, torch.Tensor]]], dict[str, torch.Tensor]] = collate
    tiles: dict[str, list[str]] = field(default_factory=dict)
    max_t: dict[str, int] = field(default_factory=dict)  # longest series per stream over the loaded tiles


def _rank_world(rank: int | None, world_size: int | None, gather: Gather | None) -> tuple[int, int]:
    if gather is None:
        return 0, 1
    if rank is None or world_size is None:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_rank(), torch.distributed.get_world_size()
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return rank, world_size


def _open_all(cfg: DataConfig, names: list[str], read_values: set[str]) -> dict[str, TileInfo]:
    """Open (structure, every chunk file present) and label-check every tile; the tiles in
    ``read_values`` (val/test: the stats pass reads the train tiles) also get the band value check,
    so an all-NaN or corrupt val tile fails now, not after the first epoch."""

    def one(name: str) -> TileInfo:
        info = open_tile(tile_path(cfg.root, name), cfg.s1_bands, cfg.s2_bands)
        check_labels(info, read_labels(info))  # a bad label in val/test would crash the loss later
        if name in read_values:
            for key in STREAMS:
                check_band_values(info, key)
        return info

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(names)))) as pool:
        return dict(zip(names, pool.map(one, names)))


def _check_consistent(infos: list[TileInfo], cfg: DataConfig) -> None:
    ref = infos[0]
    for info in infos[1:]:
        if info.class_names != ref.class_names:
            raise InputError(f"tile {info.name}: class_names differ from tile {ref.name}")
        if info.ignore_index != ref.ignore_index:
            raise InputError(
                f"tile {info.name}: ignore_index {info.ignore_index} != {ref.ignore_index} of tile {ref.name}"
            )
    if cfg.max_t is not None:
        for info in infos:
            for key in STREAMS:
                if info.streams[key].t > cfg.max_t:
                    raise InputError(
                        f"tile {info.name}: {key} has T={info.streams[key].t} > data.max_t={cfg.max_t}"
                    )


def _stats(
    cfg: DataConfig, train: list[TileInfo], num_classes: int, gather: Gather | None, cache: bool, rank: int, world: int,
    device: torch.device | None,
) -> BandStats:
    """``data.stats_cache``: read (a valid entry, else compute and write), rebuild (compute and
    overwrite), off (compute only); ``cache=False`` means off. ``device``: the trainer's; the pass
    runs on its GPU (CuPy, ``data.stats_backend``), or on numpy when the trainer is on the CPU."""
    mode = cfg.stats_cache if cache else "off"
    bands = {"s1": list(cfg.s1_bands), "s2": list(cfg.s2_bands)}
    channels = {k: len(v) for k, v in bands.items()}
    path = cache_path(cfg.root, fingerprint(train, bands)) if mode != "off" else None
    cached = load_cached(path, channels, num_classes) if path is not None and mode == "read" else None
    if gather is not None and mode == "read":  # all ranks must agree, or some would wait in the gather below
        hits = gather(np.array([1.0 if cached is not None else 0.0]))
        if not all(float(np.asarray(h).ravel()[0]) == 1.0 for h in hits):
            cached = None
    if cached is not None:
        log.info("band statistics loaded from %s (data.stats_cache=rebuild recomputes them)", path)
        return BandStats.from_partial(cached, bands)
    on_cpu = device is not None and device.type == "cpu" and cfg.stats_backend == "auto"
    gpu = device.index if device is not None and device.type == "cuda" else None
    xp = get_xp("numpy" if on_cpu else cfg.stats_backend, gpu)
    if gather is None:
        total = run_stats(xp, lambda m: compute_partial(train, num_classes, channels, m, progress=len(train) > 20), gpu)
    else:
        total = _gathered(train[rank::world], num_classes, channels, xp, gpu, gather, rank)
    result = BandStats.from_partial(total, bands)  # raises on zero variance before caching
    if path is not None and rank == 0:
        save_cached(path, total, bands)
    return result


def _gathered(
    shard: list[TileInfo], num_classes: int, channels: dict[str, int], xp: Any, gpu: int | None, gather: Gather,
    rank: int,
) -> Partial:
    """This rank's partial, merged with all others in one all-gather.

    A rank that fails on its shard (a corrupt tile) still joins the collective, with a failure
    flag as the last value, so the other ranks raise too instead of hanging in the gather.
    """
    empty = Partial({k: Moments.zeros(channels[k]) for k in STREAMS}, np.zeros(num_classes))
    error: BaseException | None = None
    try:
        progress = rank == 0 and len(shard) > 20
        mine = run_stats(xp, lambda m: compute_partial(shard, num_classes, channels, m, progress=progress), gpu)
    except Exception as exc:  # noqa: BLE001 - re-raised below, after the collective
        error, mine = exc, empty
    gathered = gather(np.append(pack(mine), 1.0 if error is not None else 0.0))
    if error is not None:
        raise error
    failed = [r for r, v in enumerate(gathered) if np.asarray(v).ravel()[-1] != 0.0]
    if failed:
        raise InputError(f"stats: rank {failed[0]} failed reading its train tiles (its log names the tile)")
    total = empty
    for v in gathered:
        total = total.merge(unpack(np.asarray(v).ravel()[:-1], channels, num_classes))
    return total


def build_data(
    cfg: DataConfig,
    splits: tuple[str, ...] | list[str] = ("train", "val"),
    gather: Gather | None = None,
    cache: bool = True,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    device: torch.device | None = None,
) -> DataBundle:
    """Datasets for ``splits`` plus stats/class weights from the train tiles (see module doc).

    ``gather`` all-gathers a 1-D float64 array across ranks; with it each rank reads only its
    shard of the train tiles (``rank``/``world_size`` default to torch.distributed's). ``device``
    is the trainer's: the statistics pass uses the same GPU (None: CuPy's current device, if any).
    """
    explicit = cfg.train_tiles is not None and all(
        getattr(cfg, f"{s}_tiles") is not None for s in splits
    )
    if cfg.synthetic is not None and not explicit and cfg.splits is None:
        from dualseg.data.synthetic import (
            ensure_synthetic,  # lazy: keeps `python -m` CLIs clean
        )

        ensure_synthetic(cfg.root, cfg.synthetic)
    if not Path(cfg.root).is_dir():
        raise InputError(f"data.root {cfg.root} does not exist")
    lists = resolve_splits(cfg, tuple(dict.fromkeys(["train", *splits])))
    names = list(dict.fromkeys(n for s in ["train", *splits] for n in lists[s]))
    infos = _open_all(cfg, names, set(names) - set(lists["train"]))
    _check_consistent(list(infos.values()), cfg)
    ref = infos[names[0]]
    rank, world = _rank_world(rank, world_size, gather)
    train = [infos[n] for n in lists["train"]]
    stats = _stats(cfg, train, ref.num_classes, gather, cache, rank, world, device)
    weights = compute_class_weights(stats.class_counts, cfg.class_weighting, ref.class_names)
    datasets = {}
    for split in splits:
        ds = TileDataset(
            [infos[n] for n in lists[split]],
            stats.mean,
            stats.std,
            patch_size=cfg.patch_size,
            train=split == "train",
            samples_per_tile=cfg.samples_per_tile,
            seed=cfg.seed,
            augment=cfg.augment,
            cache_mb=cfg.cache_mb,
            date_encoding=cfg.date_encoding,
            buffer_mb=cfg.buffer_mb,
        )
        if loader_workers(cfg.num_workers) > 0:
            ds.preload()  # before DataLoader workers fork: one copy, shared
        datasets[split] = ds
    max_t = {k: max(infos[n].streams[k].t for n in names) for k in STREAMS}
    return DataBundle(
        datasets=datasets,
        num_classes=ref.num_classes,
        class_names=list(ref.class_names),
        ignore_index=ref.ignore_index,
        s1_channels=len(cfg.s1_bands),
        s2_channels=len(cfg.s2_bands),
        class_weights=weights,
        stats=stats,
        collate_fn=functools.partial(collate, max_t=cfg.max_t, time_buckets=cfg.time_buckets),
        tiles={s: list(lists[s]) for s in splits},
        max_t=max_t,
    )


def describe(bundle: DataBundle) -> dict[str, Any]:
    """Short summary for logs."""
    return {
        "tiles": {k: len(v) for k, v in bundle.tiles.items()},
        "items": {k: len(v) for k, v in bundle.datasets.items()},
        "num_classes": bundle.num_classes,
        "max_t": bundle.max_t,
    }
