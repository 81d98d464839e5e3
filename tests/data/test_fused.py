"""The optional numba kernels give the numpy path's results (bit-identical for normalisation)."""

from __future__ import annotations

import numpy as np
import pytest

from dualseg.data.inputs import normalise


@pytest.mark.parametrize("with_cloud", [True, False])
def test_fused_normalise_is_bit_identical_to_numpy(monkeypatch, with_cloud):
    rng = np.random.default_rng(0)
    data = rng.normal(1500, 400, (10, 6, 33, 17)).astype(np.float32)
    data[3, 2, 5, 7] = np.nan
    data[0, 1, :, 3] = np.inf
    data[9, 5, 30, :] = -np.inf
    cloud = rng.random((6, 33, 17)) < 0.2 if with_cloud else None
    mean, std = rng.normal(1500, 10, 10).astype(np.float32), rng.uniform(100, 900, 10).astype(np.float32)
    got, valid = normalise(data.copy(), cloud, mean, std)
    monkeypatch.setenv("DUALSEG_NUMBA", "0")
    ref, ref_valid = normalise(data.copy(), cloud, mean, std)
    np.testing.assert_array_equal(valid, ref_valid)
    assert np.array_equal(got.view(np.int32), ref.view(np.int32))  # bit for bit, +0.0 where invalid
    assert not valid[2, 5, 7] and not valid[1, :, 3].any() and valid.sum() > 0
