"""Per-band mean/std of the training tiles in one streaming pass, mergeable across DDP ranks.

Each tile contributes exact per-band moments ``(count, mean, M2)``; tiles and ranks are combined
with Chan's parallel update, so stats of a union equal the merge of stats of its parts. Within a
tile the moments come from shifted float64 sums (``sum(x-K)``, ``sum((x-K)^2)``) over cache-sized
blocks: one streaming read of the float32 data from memory (the block's second and third passes
hit L2), float64 accuracy, and a NaN-free fast path. The
block kernel (:func:`moments_xp`) is generic in the array module ``xp`` so the same code runs on
numpy or, when it works there, CuPy on a GPU (:mod:`dualseg.data.backend` chooses).

The pass also counts training labels per class (for class weights), so one collective merges
everything: :func:`pack` / :func:`unpack` turn a :class:`Partial` into one float64 vector.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from dualseg.data import fused
from dualseg.data.manifest import content_stamp
from dualseg.data.read import read_labels, read_stream
from dualseg.data.tile import STREAMS, TileInfo, open_group, row_windows
from dualseg.data.validate import check_band_values, check_labels
from dualseg.errors import InputError
from dualseg.io import atomic_write_text

log = logging.getLogger("dualseg.data.stats")

CACHE_VERSION = 2  # 2: keyed by tile contents (was the root zarr.json stamp)
CACHE_MODES = ("read", "rebuild", "off")


@dataclass
class Moments:
    """Per-channel count, mean and sum of squared deviations (M2), float64."""

    count: np.ndarray
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def zeros(cls, c: int) -> Moments:
        return cls(np.zeros(c), np.zeros(c), np.zeros(c))

    def merge(self, other: Moments) -> Moments:
        """Chan et al.'s pairwise combination; exact for any split of the data."""
        n = self.count + other.count
        safe = np.where(n > 0, n, 1.0)
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / safe)
        m2 = self.m2 + other.m2 + delta * delta * (self.count * other.count / safe)
        return Moments(n, np.where(n > 0, mean, 0.0), np.where(n > 0, m2, 0.0))

    @property
    def std(self) -> np.ndarray:
        """Population standard deviation."""
        return np.sqrt(self.m2 / np.where(self.count > 0, self.count, 1.0))


def _host(v: Any) -> np.ndarray:
    """Device array -> numpy float64 (``.get()`` for CuPy, no-op for numpy)."""
    return np.asarray(v.get() if hasattr(v, "get") else v, dtype=np.float64)


_SEG = 4096  # dot-product segment: OpenBLAS runs ddot single-threaded below 10000 elements


def moments_xp(
    x: Any, xp: ModuleType, block: int | None = None, accel: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moments of each row of ``x`` (C,N) float array of module ``xp``; NaN/inf = missing.

    One streaming read of ``x``: each (C, block) column chunk (~1.5 MiB with its scratch, so it
    stays in L2) is converted once into a reused float64 buffer around a per-row shift ``K`` (the
    finite mean of a strided sample of the row, so a row missing at the start still gets a close
    shift), then summed and dotted with itself in cache; chunk partials
    accumulate in float64, so ``M2 = sum((x-K)^2) - sum(x-K)^2/n`` loses no precision. A chunk
    whose shifted sum is finite holds no NaN/inf and skips masking; otherwise (and directly for
    the chunk after one with holes) the missing values are counted on the float32 source
    (cheaper) and zeroed by AND-ing their bits with 0. Squares
    use ``vecdot`` on 4096-element segments: BLAS speed, but below OpenBLAS's threading threshold
    (its threaded dot was 20-200x slower on a loaded node). Returns host float64 (count, mean, m2).

    On numpy with the default block and ``accel``, the fused numba kernel
    (:mod:`dualseg.data.fused`, same shift, same segments) does all of this in one pass when numba
    is installed; ``accel=False`` forces the numpy path.
    """
    c, n = x.shape
    on_np = xp is np
    if on_np and block is None and accel and fused.available():
        k1 = _shift(x, np)[:, 0]
        cnt_f, s_f, q_f = fused.shifted_sums(x, k1)
        return _finish(cnt_f, s_f, q_f, k1)
    if block is None:
        block = max(_SEG, ((1 << 17) // max(c, 1)) // _SEG * _SEG) if on_np else max(n, 1)
    bw = min(block, max(n, 1))
    k = _shift(x, xp)
    d = xp.empty((c, bw), dtype=xp.float64)
    ok = xp.empty(d.shape, dtype=bool)
    keep = xp.empty(d.shape, dtype=xp.int64)
    vecdot: Any = getattr(xp, "vecdot", None)
    ones = xp.ones(_SEG)
    cnt, s, q = xp.zeros(c), xp.zeros(c), xp.zeros(c)
    holes = False
    for start in range(0, n, block):
        src = x[:, start : start + block]
        m = src.shape[1]
        dd = d[:, :m]
        xp.copyto(dd, src, casting="unsafe")
        xp.subtract(dd, k, out=dd)
        seg = dd.reshape(c, m // _SEG, _SEG) if on_np and vecdot is not None and m % _SEG == 0 else None
        bs = None
        if not holes:  # a chunk after one with holes skips the probe: missing data comes in runs
            bs = dd.sum(axis=1) if seg is None else vecdot(seg, ones).sum(axis=1)
        if bs is not None and bool(xp.isfinite(bs).all()):  # fast path: no NaN/inf in this chunk
            cnt += m
        else:
            oo, kk = ok[:, :m], keep[:, :m]
            xp.isfinite(src, out=oo)
            if on_np:  # count_nonzero without axis is a SIMD popcount; with axis it is a slow sum
                bc = np.array([np.count_nonzero(r) for r in oo], dtype=np.float64)
            else:
                bc = oo.sum(axis=1)
            cnt += bc
            holes = bool((bc < m).any())
            # zero the missing values: AND their bits with 0, the others with all-ones (-1);
            # ~3x faster than putmask/copyto(where=) and the same on CuPy
            if on_np:  # bool -> -1/0 int64 in one cast
                np.negative(oo.view(np.int8), out=kk, casting="unsafe")
            else:
                xp.copyto(kk, oo)
                xp.negative(kk, out=kk)
            xp.bitwise_and(dd.view(xp.int64), kk, out=dd.view(xp.int64))
            bs = dd.sum(axis=1) if seg is None else vecdot(seg, ones).sum(axis=1)
        s += bs
        if on_np and vecdot is not None:
            if seg is not None:
                q += vecdot(seg, seg).sum(axis=1)
            else:
                q += np.array([sum(vecdot(r[i : i + _SEG], r[i : i + _SEG]) for i in range(0, m, _SEG)) for r in dd])
        else:
            q += xp.einsum("ij,ij->i", dd, dd)
    return _finish(_host(cnt), _host(s), _host(q), _host(k[:, 0]))


def _shift(x: Any, xp: ModuleType) -> Any:
    """Per-row shift K (C,1): the finite mean of a strided sample (~0.1 % of a big pass)."""
    head = x[:, :: max(1, x.shape[1] // 4096)].astype(xp.float64)
    fin = xp.isfinite(head)
    k = xp.where(fin, head, 0.0).sum(axis=1) / xp.maximum(fin.sum(axis=1), 1)
    return xp.where(xp.isfinite(k), k, 0.0)[:, None]


def _finish(
    count: np.ndarray, s_h: np.ndarray, q_h: np.ndarray, k_h: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    safe = np.where(count > 0, count, 1.0)
    mean = np.where(count > 0, k_h + s_h / safe, 0.0)
    m2 = np.where(count > 0, np.maximum(q_h - s_h * s_h / safe, 0.0), 0.0)
    return count, mean, m2


@dataclass
class Partial:
    """What one rank (or one tile) contributes: moments per stream and label counts."""

    moments: dict[str, Moments]
    class_counts: np.ndarray  # (K,) float64

    def merge(self, other: Partial) -> Partial:
        return Partial(
            {k: self.moments[k].merge(other.moments[k]) for k in self.moments},
            self.class_counts + other.class_counts,
        )


def pack(p: Partial) -> np.ndarray:
    """Flatten to one float64 vector (for a single all-gather)."""
    parts = [np.stack([m.count, m.mean, m.m2]).ravel() for m in (p.moments[k] for k in STREAMS)]
    return np.concatenate([*parts, p.class_counts]).astype(np.float64)


def unpack(v: np.ndarray, channels: dict[str, int], num_classes: int) -> Partial:
    """Inverse of :func:`pack`."""
    v = np.asarray(v, dtype=np.float64).ravel()
    expected = 3 * sum(channels[k] for k in STREAMS) + num_classes
    if v.size != expected:
        raise InputError(f"stats: gathered partial has {v.size} values, expected {expected} (ranks disagree on bands?)")
    out, i = {}, 0
    for k in STREAMS:
        c = channels[k]
        cnt, mean, m2 = v[i : i + 3 * c].reshape(3, c)
        out[k] = Moments(cnt.copy(), mean.copy(), m2.copy())
        i += 3 * c
    return Partial(out, v[i:].copy())


def _tile_reads(info: TileInfo) -> list[Callable[[], Any]]:
    """The reads of one tile's statistics, in order: each stream's row windows, then the labels."""
    g = open_group(info.path, info.name)  # here, not in a read-ahead thread: a missing tile fails at once
    reads: list[Callable[[], Any]] = [
        functools.partial(read_stream, info, key, win, group=g) for key in STREAMS for win in row_windows(info, key)
    ]
    return [*reads, functools.partial(read_labels, info, group=g)]


def _ahead(reads: Iterator[Callable[[], Any]], pool: ThreadPoolExecutor) -> Iterator[Any]:
    """Results of ``reads`` in order, the next one running in ``pool`` while the caller works on
    the current one (zarr decodes on its own loop and numpy/numba release the GIL): the pass then
    costs about max(read, reduce) instead of their sum. At most two windows are held."""
    nxt = next(reads, None)
    pending = pool.submit(nxt) if nxt is not None else None
    while pending is not None:
        nxt = next(reads, None)
        result = pending.result()
        pending = pool.submit(nxt) if nxt is not None else None
        yield result


def tile_partial(info: TileInfo, num_classes: int, xp: ModuleType = np, reads: Iterator[Any] | None = None) -> Partial:
    """Moments (cloud-masked for S2) and label counts of one whole tile; checks values on the way.

    ``reads`` (the results of :func:`_tile_reads`, e.g. read ahead) defaults to reading in turn.
    """
    got = reads if reads is not None else (r() for r in _tile_reads(info))
    moments = {}
    for key in STREAMS:
        c = len(info.streams[key].bands)
        m = Moments.zeros(c)
        for _ in row_windows(info, key):
            data, cloud = next(got)
            if cloud is not None:  # cloudy -> NaN by OR-ing in a quiet-NaN bit pattern (5x copyto(where=))
                nan_bits = np.negative(cloud.view(np.int8), dtype=np.int32) & np.int32(0x7FC00000)
                np.bitwise_or(data.view(np.int32), nan_bits[None], out=data.view(np.int32))
            x = data.reshape(c, -1) if xp is np else xp.asarray(data.reshape(c, -1))
            m = m.merge(Moments(*moments_xp(x, xp)))
        if (m.count == 0).any():  # all NaN, or only hidden by clouds (which is legitimate)
            check_band_values(info, key, open_group(info.path, info.name))
        moments[key] = m
    labels = next(got)
    check_labels(info, labels)
    counts = np.bincount(labels[labels != info.ignore_index].ravel(), minlength=num_classes)[:num_classes]
    return Partial(moments, counts.astype(np.float64))


def compute_partial(
    infos: list[TileInfo], num_classes: int, channels: dict[str, int], xp: ModuleType = np, progress: bool = False
) -> Partial:
    """Merge of :func:`tile_partial` over ``infos`` (one rank's shard), reading one window ahead."""
    total = Partial({k: Moments.zeros(channels[k]) for k in STREAMS}, np.zeros(num_classes))
    it: Any = infos
    if progress:
        from tqdm import tqdm

        it = tqdm(infos, desc="band statistics", unit="tile")
    tiles = iter(it)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dualseg-stats") as pool:
        results = _ahead((r for info in tiles for r in _tile_reads(info)), pool)
        for info in infos:
            total = total.merge(tile_partial(info, num_classes, xp, results))
    return total


def fingerprint(infos: list[TileInfo], bands: dict[str, list[str]]) -> str:
    """Key of the stats cache: the bands and, per train tile, its name and content stamp (the
    manifest plus every stored file's key, size and mtime: :func:`~dualseg.data.manifest.content_stamp`),
    so rewriting any band of any train tile in place misses the cache. No chunk is read."""
    h = hashlib.sha256()
    stamp = [[info.name, content_stamp(info.path)] for info in sorted(infos, key=lambda i: i.name)]
    h.update(json.dumps({"v": CACHE_VERSION, "bands": bands, "tiles": stamp}, sort_keys=True).encode())
    return h.hexdigest()[:20]


def cache_path(root: str | Path, fp: str) -> Path:
    return Path(root) / ".dualseg-stats" / f"{fp}.json"


def load_cached(path: Path, channels: dict[str, int], num_classes: int) -> Partial | None:
    """The cached merged partial, or None when absent/unreadable/mismatched."""
    try:
        raw = json.loads(path.read_text())
        return unpack(np.asarray(raw["packed"], dtype=np.float64), channels, num_classes)
    except (OSError, ValueError, KeyError, TypeError, InputError):
        return None


def save_cached(path: Path, p: Partial, bands: dict[str, list[str]]) -> None:
    """Atomic JSON write; a read-only data directory only costs a warning."""
    doc = {"version": CACHE_VERSION, "bands": bands, "packed": pack(p).tolist()}
    try:
        atomic_write_text(path, json.dumps(doc) + "\n")
    except OSError as exc:
        log.warning("could not write stats cache %s: %s", path, exc)


Gather = Callable[[np.ndarray], list[np.ndarray]]


def check_stats(total: Partial, bands: dict[str, list[str]]) -> None:
    """Every band needs valid pixels and a non-zero variance to be z-scored."""
    for key in STREAMS:
        m = total.moments[key]
        for c, band in enumerate(bands[key]):
            if m.count[c] == 0:
                raise InputError(f"stats: band {key}/{band} has no valid pixel in the train tiles")
            if not m.m2[c] > 0:
                raise InputError(
                    f"stats: band {key}/{band} has zero variance over the train tiles (constant value {m.mean[c]:g})"
                )


@dataclass
class BandStats:
    """Normalisation constants per stream (float64 mean/std per band) plus train label counts."""

    bands: dict[str, list[str]]
    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]
    count: dict[str, np.ndarray]
    class_counts: np.ndarray

    @classmethod
    def from_partial(cls, total: Partial, bands: dict[str, list[str]]) -> BandStats:
        check_stats(total, bands)
        m = total.moments
        return cls(
            bands={k: list(bands[k]) for k in STREAMS},
            mean={k: m[k].mean.copy() for k in STREAMS},
            std={k: m[k].std for k in STREAMS},
            count={k: m[k].count.copy() for k in STREAMS},
            class_counts=total.class_counts.copy(),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (e.g. to store next to a checkpoint)."""
        return {
            k: {"bands": self.bands[k], "mean": self.mean[k].tolist(), "std": self.std[k].tolist()} for k in STREAMS
        } | {"class_counts": self.class_counts.tolist()}
