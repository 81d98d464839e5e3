"""Moments: exact vs float64 numpy on adversarial data, mergeable, fused and generic (CuPy-like) paths."""

from __future__ import annotations

import numpy as np
import pytest

from dualseg.data.moments import Moments, moments_xp


def _ref(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x64 = x.astype(np.float64)
    x64[~np.isfinite(x64)] = np.nan
    n = np.sum(np.isfinite(x64), axis=1).astype(float)
    mean = np.nanmean(x64, axis=1)
    return n, mean, np.nansum((x64 - mean[:, None]) ** 2, axis=1)


def _assert_exact(x: np.ndarray, got: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    """Counts equal, mean to 1e-12 and M2 to 1e-9 relative of the float64 reference."""
    rn, rmean, rm2 = _ref(x)
    np.testing.assert_array_equal(got[0], rn)
    np.testing.assert_allclose(got[1], rmean, rtol=1e-12)
    np.testing.assert_allclose(got[2], rm2, rtol=1e-9)


@pytest.mark.parametrize("block", [7, 1000, 1 << 15])
def test_moments_exact_vs_float64(block):
    rng = np.random.default_rng(0)
    x = np.stack([rng.normal(5000, 300, 20_000), rng.normal(-15, 4, 20_000),
                  rng.uniform(0, 1, 20_000)]).astype(np.float32)
    x[0, rng.random(20_000) < 0.3] = np.nan
    x[1, :5000] = np.nan  # whole first blocks missing
    x[2, 17] = np.inf
    _assert_exact(x, moments_xp(x, np, block=block))


def test_moments_large_offset_small_variance():
    # float32 reflectance-like values with a tiny spread: naive sum-of-squares in float32 fails here
    rng = np.random.default_rng(1)
    x = (10_000 + rng.normal(0, 0.05, (1, 100_000))).astype(np.float32)
    _, mean, m2 = moments_xp(x, np)
    _, rmean, rm2 = _ref(x)
    np.testing.assert_allclose(mean, rmean, rtol=1e-12)
    np.testing.assert_allclose(m2, rm2, rtol=1e-6)


def test_all_missing_row_has_zero_count():
    x = np.full((2, 50), np.nan, dtype=np.float32)
    x[1, 3] = 2.0
    n, mean, m2 = moments_xp(x, np, block=16)
    assert n.tolist() == [0, 1] and mean[1] == 2.0 and m2[1] == 0.0


def test_merged_partials_equal_union():
    rng = np.random.default_rng(2)
    x = rng.normal(3, 2, (2, 9_999)).astype(np.float32)
    x[:, rng.random(9_999) < 0.1] = np.nan
    parts = [Moments(*moments_xp(x[:, s], np)) for s in (slice(0, 10), slice(10, 5000), slice(5000, None))]
    merged = Moments.zeros(2)
    for p in [Moments.zeros(2), *parts]:  # merging an empty partial is a no-op
        merged = merged.merge(p)
    whole = Moments(*moments_xp(x, np))
    np.testing.assert_array_equal(merged.count, whole.count)
    np.testing.assert_allclose(merged.mean, whole.mean, rtol=1e-12)
    np.testing.assert_allclose(merged.m2, whole.m2, rtol=1e-12)
    np.testing.assert_allclose(merged.std, np.nanstd(x.astype(np.float64), axis=1), rtol=1e-12)


@pytest.mark.parametrize("accel", [True, False])  # the fused numba kernel (when installed) and numpy
@pytest.mark.parametrize("n", [3 * 4096 * 4, 200_003])  # whole dot segments, and a ragged tail
def test_moments_exact_on_adversarial_data(n, accel):
    # reflectance-like offset with a tiny spread, 30 % NaN, inf, a row missing in whole blocks,
    # at the default block size (the in-cache segmented path the benchmark measures)
    rng = np.random.default_rng(3)
    x = np.stack([10_000 + rng.normal(0, 0.05, n), rng.normal(-15, 4, n), rng.normal(1e-3, 1e-4, n)]).astype(np.float32)
    x[:, rng.random(n) < 0.3] = np.nan
    x[1, : n // 2] = np.nan
    x[0, : n // 3] = np.nan  # the large-offset row starts with missing blocks too
    x[2, 5] = np.inf
    x[0, -1] = -np.inf
    _assert_exact(x, moments_xp(x, np, accel=accel))
    _assert_exact(x.astype(np.float64), moments_xp(x.astype(np.float64), np, accel=accel))


def test_moments_exact_when_holes_stop_and_restart():
    # chunks with holes, then clean chunks (masked path -> fast path), then holes again
    rng = np.random.default_rng(4)
    x = rng.normal(700, 30, (2, 40_000)).astype(np.float32)
    x[:, :9000][rng.random((2, 9000)) < 0.5] = np.nan
    x[1, 31_000:31_010] = np.nan
    for block in (4096, 5000):
        _assert_exact(x, moments_xp(x, np, block=block))
    _assert_exact(x, moments_xp(x, np))  # default block: the fused kernel when numba is installed


def test_fused_kernel_matches_numpy_path(monkeypatch):
    from dualseg.data import fused

    rng = np.random.default_rng(6)
    x = rng.normal(1500, 400, (3, 50_001)).astype(np.float32)
    x[1, rng.random(50_001) < 0.3] = np.nan
    x[2, 4096:8192] = np.nan  # a whole segment missing, then clean ones
    x[2, 9000] = np.inf
    ref = moments_xp(x, np, accel=False)
    if fused.available():  # numba installed (the test extra installs it)
        got = moments_xp(x, np)
        np.testing.assert_array_equal(got[0], ref[0])
        np.testing.assert_allclose(got[1], ref[1], rtol=1e-13)
        np.testing.assert_allclose(got[2], ref[2], rtol=1e-11)
    monkeypatch.setenv("DUALSEG_NUMBA", "0")
    assert not fused.available()
    assert all(np.array_equal(a, b) for a, b in zip(moments_xp(x, np), ref))  # numpy path, bit-identical


def test_generic_array_module_path_matches():
    # the branch CuPy takes (no numpy fast paths, one chunk), run with numpy behind another module
    import types

    xp = types.ModuleType("numpy_like")
    xp.__dict__.update({k: getattr(np, k) for k in dir(np) if not k.startswith("__") and k != "vecdot"})
    rng = np.random.default_rng(5)
    x = np.stack([10_000 + rng.normal(0, 0.05, 30_001), rng.normal(-15, 4, 30_001)]).astype(np.float32)
    x[:, rng.random(30_001) < 0.3] = np.nan
    x[1, 7] = np.inf
    _assert_exact(x, moments_xp(x, xp))


@pytest.mark.parametrize("accel", [True, False])
def test_moments_int_are_exact_and_dequantise_analytically(accel):
    """Integer moments (nodata and excluded pixels left out) equal float64 numpy on the same
    values, and the analytic dequantisation equals the moments of the dequantised floats."""
    from dualseg.data.moments import dequantised, moments_int

    rng = np.random.default_rng(3)
    x = rng.integers(1, 65535, (3, 50_001)).astype(np.uint16)
    x[1, ::5] = 0  # nodata
    x[2] = 0
    x[2, 7] = 1234  # one valid value: M2 = 0
    ex = rng.random(x.shape[1]) < 0.25
    cnt, mean, m2 = moments_int(x, 0, ex, accel=accel)
    for r in range(2):
        v = x[r][(x[r] != 0) & ~ex].astype(np.float64)
        assert cnt[r] == v.size
        np.testing.assert_allclose(mean[r], v.mean(), rtol=1e-14)
        np.testing.assert_allclose(m2[r], ((v - v.mean()) ** 2).sum(), rtol=1e-12)
    assert cnt[2] in (0, 1) and m2[2] == 0.0
    scale, offset = np.array([1e-4, 1e-4, 1e-4]), np.array([-1000.0] * 3)
    c2, mean2, m22 = dequantised(cnt, mean, m2, scale, offset)
    v = (x[0][~ex].astype(np.float64) - 1000.0) * 1e-4
    np.testing.assert_allclose(mean2[0], v.mean(), rtol=1e-12)
    np.testing.assert_allclose(m22[0], ((v - v.mean()) ** 2).sum(), rtol=1e-10)
