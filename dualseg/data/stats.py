"""Per-band mean/std of the training tiles in one streaming pass, mergeable across DDP ranks.

Each tile contributes exact per-band moments (:mod:`dualseg.data.moments`); tiles and ranks are
combined with Chan's parallel update, so stats of a union equal the merge of stats of its parts.
The pass also counts training labels per class (for class weights), so one collective merges
everything: :func:`pack` / :func:`unpack` turn a :class:`Partial` into one float64 vector. The
merged result is cached under the data root, keyed by the train tiles' contents (:func:`fingerprint`).
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

from dualseg.data.manifest import content_stamp
from dualseg.data.moments import Moments, dequantised, moments_int, moments_xp
from dualseg.data.quant import Quant
from dualseg.data.read import read_labels, read_stream, read_stream_raw
from dualseg.data.tile import STREAMS, TileInfo, open_group, row_windows
from dualseg.data.validate import check_band_values, check_labels
from dualseg.errors import InputError
from dualseg.io import atomic_write_text

log = logging.getLogger("dualseg.data.stats")

CACHE_VERSION = 3  # 2: keyed by tile contents (was the root zarr.json stamp); 3: + tile format version
CACHE_MODES = ("read", "rebuild", "off")


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


def _tile_reads(info: TileInfo, ints: bool = True) -> list[Callable[[], Any]]:
    """The reads of one tile's statistics, in order: each stream's row windows, then the labels."""
    g = open_group(info.path, info.name)  # here, not in a read-ahead thread: a missing tile fails at once
    reads: list[Callable[[], Any]] = [  # on numpy quantised bands (version 2) are reduced as stored integers
        functools.partial(read_stream_raw if ints and info.streams[key].quant else read_stream, info, key, win, group=g)
        for key in STREAMS for win in row_windows(info, key)
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
    got = reads if reads is not None else (r() for r in _tile_reads(info, xp is np))
    moments = {}
    for key in STREAMS:
        c = len(info.streams[key].bands)
        m = Moments.zeros(c)
        quant = info.streams[key].quant if xp is np else None  # CuPy: the float kernel on the device
        for _ in row_windows(info, key):
            data, cloud = next(got)
            if quant is not None:
                m = m.merge(_int_moments(data, cloud, quant))
                continue
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


def _int_moments(parts: list[np.ndarray], cloud: np.ndarray | None, quant: list[Quant]) -> Moments:
    """Moments of quantised bands from their integers (no float32 pass): exact integer sums per
    band, nodata and cloud-flagged pixels left out, dequantised analytically."""
    ex = None if cloud is None else cloud.reshape(-1)
    rows = [moments_int(dn.reshape(1, -1), q.nodata, ex) for dn, q in zip(parts, quant)]
    cnt, mean, m2 = (np.concatenate([r[i] for r in rows]) for i in range(3))
    scale = np.array([q.scale for q in quant])
    offset = np.array([q.offset for q in quant])
    return Moments(*dequantised(cnt, mean, m2, scale, offset))


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
        results = _ahead((r for info in tiles for r in _tile_reads(info, xp is np)), pool)
        for info in infos:
            total = total.merge(tile_partial(info, num_classes, xp, results))
    return total


def fingerprint(infos: list[TileInfo], bands: dict[str, list[str]]) -> str:
    """Key of the stats cache: the bands and, per train tile, its name and content stamp (the
    manifest plus every stored file's key, size and mtime: :func:`~dualseg.data.manifest.content_stamp`),
    so rewriting any band of any train tile in place misses the cache. No chunk is read."""
    h = hashlib.sha256()
    stamp = [[info.name, info.version, content_stamp(info.path)] for info in sorted(infos, key=lambda i: i.name)]
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
