"""Optional numba kernel for :func:`dualseg.data.moments.moments_xp`: one fused pass per row.

The numpy path makes several passes over each cache-sized chunk (convert, subtract, probe, mask,
dot); this kernel converts, shifts, masks and accumulates each value once, in registers. Sums are
kept per 4096-value segment (vectorised with reassociation, so each lane sums <= 1024 values)
and the segment partials are added in float64, which keeps the 1e-12 relative exactness of the
numpy path. Like it, a segment is summed unmasked first (the fast path for clean data) and
re-summed with masking only when its sums are not finite; after a segment with holes the next
one is masked directly (missing data comes in runs). Only the ``fastmath`` flags that keep NaN
and infinity semantics are used (``reassoc``, ``contract``).

numba is an optional dependency (``pip install dualseg[fast]``): :func:`available` says whether
it imports; ``DUALSEG_NUMBA=0`` turns the kernel off.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

_SEG = 4096
_kernel: Any = None


def _build() -> Any:
    from numba import njit

    fm = {"reassoc", "contract"}

    @njit(nogil=True, fastmath=fm, inline="always", cache=True)
    def clean(row: Any, b0: int, b1: int, k: float) -> tuple[float, float]:  # pragma: no cover - jitted
        s = 0.0
        q = 0.0
        for i in range(b0, b1):
            d = np.float64(row[i]) - k
            s += d
            q += d * d
        return s, q

    @njit(nogil=True, fastmath=fm, inline="always", cache=True)
    def masked(row: Any, b0: int, b1: int, k: float) -> tuple[int, float, float]:  # pragma: no cover
        n = 0
        s = 0.0
        q = 0.0
        for i in range(b0, b1):
            d = float(row[i]) - k
            ok = abs(d) < np.inf  # False for NaN and +-inf
            d = d if ok else 0.0
            n += 1 if ok else 0
            s += d
            q += d * d
        return n, s, q

    @njit(nogil=True, fastmath=fm, cache=True)
    def rows(x: Any, k: Any, out: Any) -> None:  # pragma: no cover - jitted
        c_n, n_n = x.shape
        for c in range(c_n):
            row = x[c]
            kc = k[c]
            tn = 0.0
            ts = 0.0
            tq = 0.0
            holes = False
            for b0 in range(0, n_n, _SEG):
                b1 = min(b0 + _SEG, n_n)
                if not holes:
                    s, q = clean(row, b0, b1, kc)
                    if abs(s) < np.inf and abs(q) < np.inf:
                        tn += b1 - b0
                        ts += s
                        tq += q
                        continue
                n, s, q = masked(row, b0, b1, kc)
                holes = n < b1 - b0
                tn += n
                ts += s
                tq += q
            out[c, 0] = tn
            out[c, 1] = ts
            out[c, 2] = tq

    return rows


_ints: Any = None


def _build_int() -> Any:
    from numba import njit

    @njit(nogil=True, cache=True)
    def rows(x: Any, k: Any, nodata: int, exclude: Any, use_ex: bool, out: Any) -> None:  # pragma: no cover
        c_n, n_n = x.shape
        for c in range(c_n):
            row = x[c]
            kc = k[c]
            n = np.int64(0)
            s = np.int64(0)
            q = np.int64(0)
            for i in range(n_n):
                v = np.int64(row[i])
                ok = v != nodata
                if use_ex:
                    ok = ok and not exclude[i]
                d = v - kc if ok else np.int64(0)
                n += 1 if ok else 0
                s += d
                q += d * d
            out[c, 0] = n
            out[c, 1] = s
            out[c, 2] = q

    return rows


def int_sums(x: np.ndarray, k: np.ndarray, nodata: int, exclude: np.ndarray | None) -> np.ndarray:
    """(C,3) int64: count, sum(x-K), sum((x-K)^2) of each row of integer ``x`` (C,N) over values
    other than ``nodata`` and not ``exclude`` (N,) - exact integer sums, one pass."""
    global _ints
    if _ints is None:
        _ints = _build_int()
    out = np.empty((x.shape[0], 3), dtype=np.int64)
    ex = np.zeros(1, dtype=bool) if exclude is None else np.ascontiguousarray(exclude, dtype=bool)
    _ints(np.ascontiguousarray(x), np.ascontiguousarray(k, dtype=np.int64), int(nodata), ex, exclude is not None, out)
    return out


_deq: Any = None


def dequantise_into(dn: np.ndarray, a: np.float32, b: np.float32, nodata: int, out: np.ndarray) -> None:
    """``out`` (float32, flat like ``dn``) = ``dn * a + b``, NaN where ``dn == nodata``: one pass
    instead of numpy's four (multiply, add, compare, masked store). No fastmath: bit-identical to
    numpy's float32 multiply-then-add."""
    global _deq
    if _deq is None:
        from numba import njit

        @njit(nogil=True, cache=True)
        def deq(x: Any, a: Any, b: Any, nodata: int, o: Any) -> None:  # pragma: no cover - jitted
            nan = np.float32(np.nan)
            for i in range(x.shape[0]):
                v = x[i]
                o[i] = nan if v == nodata else np.float32(v) * a + b

        _deq = deq
    _deq(dn.reshape(-1), a, b, int(nodata), out.reshape(-1))


def available() -> bool:
    """Whether the fused kernel can run (numba importable and not disabled by ``DUALSEG_NUMBA=0``)."""
    global _kernel
    if os.environ.get("DUALSEG_NUMBA", "1") == "0":
        return False
    if _kernel is None:
        try:
            _kernel = _build()
        except ImportError:
            _kernel = False
    return _kernel is not False


def shifted_sums(x: np.ndarray, k: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum(x-K), sum((x-K)^2)) per row of finite values of ``x`` (C,N) float32/float64."""
    if not available():
        raise RuntimeError("numba kernel not available")
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    out = np.empty((x.shape[0], 3))
    _kernel(np.ascontiguousarray(x), np.ascontiguousarray(k, dtype=np.float64), out)
    return out[:, 0], out[:, 1], out[:, 2]
