"""Parts 4 and 5 of ``bench/bench_data.py`` (run there): synthetic generator time, and the padding
``data.time_buckets`` / ``data.max_t`` add over one epoch of the trainer's own batches on 4 ranks."""

from __future__ import annotations

import statistics
import time
from pathlib import Path


def bench_padding(
    label: str, root: Path, *, dates: tuple[int, int], batch: int, tiles: int, world: int = 4
) -> list[tuple[str, float, str]]:
    """Frames the padding adds, per policy, over one epoch of every rank's batches (indices only, no
    decoding), on distinct synthetic tiles whose series lengths vary as the generator draws them."""
    from dualseg.config import DataConfig, SyntheticConfig
    from dualseg.data import build_data, collate, generate
    from dualseg.data.batch import padded_length
    from dualseg.data.tile import STREAMS
    from dualseg.train.loaders import train_loader

    generate(root, SyntheticConfig(tiles=tiles, size=32, s1_dates=dates[0], s2_dates=dates[1]))
    spt = 8
    cfg = DataConfig(root=str(root), patch_size=16, samples_per_tile=spt)
    ds = build_data(cfg, splits=("train",)).datasets["train"]
    lengths = [{k: info.streams[k].t for k in STREAMS} for info in ds.tiles]
    batches = []
    for rank in range(world):
        loader, sampler, _ = train_loader(ds, collate, batch_size=batch, rank=rank, world_size=world, seed=0,
                                          num_workers=0, pin_memory=False, max_t=None)
        sampler.set_epoch(0)
        keys = list(loader.batch_sampler)  # type: ignore[arg-type]  # an index, or a streaming key (index, ...)
        batches += [[lengths[(k[0] if isinstance(k, tuple) else k) // spt] for k in idx] for idx in keys]
    real = sum(t[k] for b in batches for t in b for k in STREAMS)
    top = {k: max(t[k] for t in lengths) for k in STREAMS}
    rows = []
    for name, buckets, max_t in (("batch maximum (default)", None, None), ("time_buckets=4", 4, None),
                                 ("time_buckets=8", 8, None), ("max_t = longest series", None, top)):
        shapes = set()
        padded = 0
        for b in batches:
            shape = tuple(padded_length(max(t[k] for t in b), max_t[k] if max_t else None, buckets) for k in STREAMS)
            shapes.add(shape)
            padded += len(b) * sum(shape)
        rows.append((f"[{label}] {name}: extra frames, {len(shapes)} batch shapes", 100 * (padded - real) / real,
                     "% of real frames"))
    return rows


def bench_generate(tmp: Path, repeat: int) -> list[tuple[str, float, str]]:
    from dualseg.config import SyntheticConfig
    from dualseg.data.synthetic import generate

    times = []
    for i in range(repeat):
        t0 = time.perf_counter()
        generate(tmp / f"gen{i}", SyntheticConfig(tiles=6, size=32))
        times.append(time.perf_counter() - t0)
    return [("synthetic generate, 6 tiles 32x32 (median)", statistics.median(times), "s")]
