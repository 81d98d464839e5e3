"""Exact per-channel moments ``(count, mean, M2)`` of float data with missing values, and their merge.

The numeric core of the band statistics (:mod:`dualseg.data.stats`), free of tiles and I/O so it
can be tested and benchmarked on its own. Moments come from shifted float64 sums (``sum(x-K)``,
``sum((x-K)^2)``) over cache-sized blocks: one streaming read of the float32 data from memory (the
block's second and third passes hit L2), float64 accuracy, and a NaN-free fast path. The block
kernel (:func:`moments_xp`) is generic in the array module ``xp`` so the same code runs on numpy
or, when it works there, CuPy on a GPU (:mod:`dualseg.data.backend` chooses). :class:`Moments`
merge with Chan's parallel update: moments of a union equal the merge of moments of its parts.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from dualseg.data import fused


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


def moments_int(
    x: np.ndarray, nodata: int, exclude: np.ndarray | None = None, accel: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moments ``(count, mean, M2)`` of each row of integer ``x`` (C,N) in stored units (DN),
    values equal to ``nodata`` or flagged in ``exclude`` (N,) left out: quantised bands
    (format version 2) without widening them to float32 first.

    Exact: integer sums of ``x-K`` and ``(x-K)^2`` (K a valid value of the row, so the sums
    stay far inside int64 for a row of up to 2**31 16-bit values), and ``M2 = (n*Q - S^2) / n`` in
    Python integers. One pass with numba (:func:`dualseg.data.fused.int_sums`), else int64
    numpy blocks. Dequantise with :func:`dequantised`.
    """
    c, n = x.shape
    k = np.zeros(c, dtype=np.int64)
    for r in range(c):  # a valid value per row (first of a strided sample): small shifted sums
        head = x[r, :: max(1, n // 4096)]
        ok = head[head != nodata]
        k[r] = int(ok[len(ok) // 2]) if ok.size else 0
    if accel and fused.available():
        sums = fused.int_sums(x, k, nodata, exclude)
    else:
        sums = np.zeros((c, 3), dtype=np.int64)
        for start in range(0, n, 1 << 16):
            b = x[:, start : start + (1 << 16)]
            ok = b != nodata
            if exclude is not None:
                ok &= ~exclude[None, start : start + (1 << 16)]
            d = np.where(ok, b.astype(np.int64) - k[:, None], 0)
            sums += np.stack([ok.sum(axis=1), d.sum(axis=1), np.einsum("ij,ij->i", d, d)], axis=1)
    count = sums[:, 0].astype(np.float64)
    mean, m2 = np.zeros(c), np.zeros(c)
    for r in range(c):
        cnt, s1, q1 = (int(v) for v in sums[r])
        if cnt:
            mean[r] = int(k[r]) + s1 / cnt
            m2[r] = (cnt * q1 - s1 * s1) / cnt
    return count, mean, m2


def dequantised(count: np.ndarray, mean: np.ndarray, m2: np.ndarray, scale: np.ndarray, offset: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Moments of ``(DN + offset) * scale`` from those of DN, analytically: the mean maps like a
    value, ``M2`` scales by ``scale**2`` (a shift leaves it unchanged)."""
    return count, np.where(count > 0, (mean + offset) * scale, 0.0), m2 * scale * scale
