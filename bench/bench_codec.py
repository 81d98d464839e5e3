"""Tile format version 2 vs 1, as ratios measured side by side in one run (``python bench/bench_codec.py``).

1. Codec table: stored bytes per value and decode MB/s (of raw bytes) on one core, per array kind
   (S2 uint16, S1 int16 and float16, labels, cloud mask; S2 float32 = version 1 for reference) and
   codec (none, Blosc-LZ4 byte/bit shuffle, Blosc-Zstd levels 1-3, Blosc-Zstd 1 bit-shuffle),
   on the synthetic generator's tiles (128 px, quickstart dates). Blosc runs single-threaded.
2. The trainer's loader, samples/s on one core (main process, nothing cached: every sample comes
   from a streamed decode), version 1 vs version 2 of the same tiles (goal >= 2x); the loader vs a
   bare read+decode of the same chunks (``read_all(raw=True)``: decode + stack, what the loader must
   do at least; goal >= 0.8); a bare whole-tile ``read_all`` per version and the bytes on disk per
   sample, at quickstart and PASTIS-R shapes. The loader hands stored integers to the device
   (``dualseg.data.prepare``), so its CPU work per sample is decode + crop + stack.
3. Statistics kernel on the integers (:func:`dualseg.data.moments.moments_int`) vs a bare
   ``np.sum(x, dtype=np.float64)`` of the same uint16 array (goal >= 0.8).

``--quick`` shrinks everything for a smoke run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_data import loader_rate, make_dataset  # run as bench/bench_codec.py: bench/ is sys.path[0]

CODECS = {
    "none": None,
    "lz4 shuffle": ("lz4", 5, 1),
    "lz4 bitshuffle": ("lz4", 5, 2),
    "zstd1 shuffle": ("zstd", 1, 1),
    "zstd2 shuffle": ("zstd", 2, 1),
    "zstd3 shuffle": ("zstd", 3, 1),
    "zstd1 bitshuffle": ("zstd", 1, 2),
}


def _best(fn: object, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()  # type: ignore[operator]
        best = min(best, time.perf_counter() - t0)
    return best


def codec_table(size: int, repeat: int) -> list[tuple[str, float, float]]:
    """(kind/codec, bytes per value, decode MB/s of raw bytes on one core)."""
    from numcodecs import Blosc, blosc

    from dualseg.config import SyntheticConfig
    from dualseg.data.quant import QUANT
    from dualseg.data.synthetic import make_tile

    blosc.use_threads = False
    tile = make_tile(SyntheticConfig(tiles=3, size=size, classes=6, s1_dates=30, s2_dates=24), 0)
    s2 = np.stack(list(tile.s2.bands.values()))
    s1 = np.stack(list(tile.s1.bands.values()))
    kinds = {
        "S2 float32 (v1)": s2.astype(np.float32),
        "S2 uint16": QUANT["s2"].encode(s2, "s2"),
        "S1 int16 dB x100": QUANT["s1"].encode(s1, "s1"),
        "S1 float16": s1.astype(np.float16),
        "labels int16": tile.labels.astype(np.int16),
        "cloud bool": np.asarray(tile.s2.cloud),
    }
    rows = []
    for kind, arr in kinds.items():
        arr = np.ascontiguousarray(arr)
        for name, spec in CODECS.items():
            if spec is None:
                stored, dt = arr.nbytes, _best(lambda a=arr: a.copy(), repeat)
            else:
                c = Blosc(cname=spec[0], clevel=spec[1], shuffle=spec[2])
                enc = c.encode(arr)
                stored, dt = len(enc), _best(lambda c=c, e=enc: c.decode(e), repeat)
            rows.append((f"{kind:18s} {name:16s}", stored / arr.size, arr.nbytes / dt / 1e6))
    return rows


def bench_formats(label: str, roots: dict[int, Path], *, patch: int, spt: int, repeat: int
                  ) -> list[tuple[str, float, str]]:
    """Loader samples/s on one core (nothing cached), bare whole-tile read, bytes per sample: v1 vs v2."""
    import torch

    from dualseg.config import DataConfig
    from dualseg.data import build_data
    from dualseg.data.read import read_all
    from dualseg.data.tile import open_tile

    torch.set_num_threads(1)

    def fresh(v: int) -> object:
        cfg = DataConfig(root=str(roots[v]), patch_size=patch, samples_per_tile=spt, augment=True, num_workers=0,
                         cache_mb=0, buffer_mb=128)
        return build_data(cfg, splits=("train",))

    bundles = {v: fresh(v) for v in roots}
    infos = {v: [open_tile(p) for p in sorted(roots[v].glob("*.zarr"))[:4]] for v in roots}
    rate: dict[int, list[float]] = {v: [] for v in roots}
    read: dict[int, list[float]] = {v: [] for v in roots}
    raw: list[float] = []  # v2's stored integers, decoded and stacked: the loader's own read
    for _ in range(repeat):  # interleaved rounds, best of each: the machine is shared
        for v in roots:
            b = fresh(v)
            rate[v].append(loader_rate(b.datasets["train"], b.collate_fn, range(1), 8, 0))  # type: ignore[attr-defined]
            read[v].append(_best(lambda v=v: [read_all(i) for i in infos[v]], 1) / len(infos[v]))
        raw.append(_best(lambda: [read_all(i, raw=True) for i in infos[2]], 1) / len(infos[2]))
    n_train = len(bundles[1].tiles["train"])  # type: ignore[attr-defined]
    stored = {v: sum(f.stat().st_size for f in roots[v].rglob("*") if f.is_file()) for v in roots}
    per_sample = {v: stored[v] / ((n_train + 2) * spt) for v in roots}  # every tile, as if all were train
    r = {v: max(rate[v]) for v in roots}
    t = {v: min(read[v]) * 1e3 for v in roots}
    return [
        (f"[{label}] loader, v1 float32 (cache_mb=0, 1 core)", r[1], "samples/s"),
        (f"[{label}] loader, v2 quantised", r[2], "samples/s"),
        (f"[{label}]   ratio v2 / v1 (goal >= 2)", r[2] / r[1], "x"),
        (f"[{label}] bare read_all of one tile, v1", t[1], "ms"),
        (f"[{label}] bare read_all of one tile, v2 (incl. CPU dequantisation)", t[2], "ms"),
        (f"[{label}]   ratio v1 / v2", t[1] / t[2], "x"),
        (f"[{label}] bare read+decode of v2's integers (read_all raw=True, one tile)", min(raw) * 1e3, "ms"),
        (f"[{label}]   ratio v1 read_all / that (the read's bound on v2 / v1)", t[1] / (min(raw) * 1e3), "x"),
        (f"[{label}] loader v2 / bare read+decode of the same chunks (goal >= 0.8)", r[2] * min(raw) / spt, "x"),
        (f"[{label}] bytes on disk per sample, v1", per_sample[1] / 1024, "KiB"),
        (f"[{label}] bytes on disk per sample, v2", per_sample[2] / 1024, "KiB"),
        (f"[{label}]   ratio v2 / v1", per_sample[2] / per_sample[1], "x"),
    ]


def bench_int_stats(mb: int, repeat: int) -> list[tuple[str, float, str]]:
    from dualseg.data.moments import moments_int

    rng = np.random.default_rng(0)
    n = mb * 2**20 // 2 // 10
    x = rng.normal(2500, 400, (10, n)).clip(1, 65535).astype(np.uint16)
    ref = _best(lambda: np.sum(x, axis=1, dtype=np.float64), repeat)
    mine = _best(lambda: moments_int(x, nodata=0), repeat)
    gib = x.nbytes / 2**30
    return [("np.sum(x, dtype=float64) of uint16", gib / ref, "GiB/s"),
            ("moments_int (count, mean, M2; nodata excluded)", gib / mine, "GiB/s"),
            ("  ratio vs np.sum (goal >= 0.8)", ref / mine, "x")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--skip", default="", help="comma list of: codec, loader, stats")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    repeat = 3 if a.quick else 7
    if "codec" not in skip:
        print(f"{'kind / codec':36s} {'B/value':>8s} {'decode MB/s/core':>17s}")
        for name, bpv, mbs in codec_table(64 if a.quick else 128, repeat):
            print(f"{name:36s} {bpv:8.3f} {mbs:17.0f}")
    rows: list[tuple[str, float, str]] = []
    if "loader" not in skip:
        with tempfile.TemporaryDirectory() as tmp:
            shapes = [("quickstart", dict(size=128, s1_dates=30, s2_dates=24, s1_ratio=False), 32, 16)]
            if not a.quick:
                shapes.append(("PASTIS-R", dict(size=128, s1_dates=70, s2_dates=40, s1_ratio=True), 64, 4))
            for label, shape, patch, spt in shapes:
                roots = {v: make_dataset(Path(tmp) / f"{label}-v{v}", 4 if a.quick else 12, version=v, **shape)
                         for v in (1, 2)}
                rows += bench_formats(label, roots, patch=patch, spt=spt, repeat=2 if a.quick else 3)
    if "stats" not in skip:
        rows += bench_int_stats(16 if a.quick else 128, repeat)
    for name, value, unit in rows:
        print(f"{name:72s} {value:10.3g} {unit}")


if __name__ == "__main__":
    main()
