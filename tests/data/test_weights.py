"""Class weights: inverse and median frequency, absent classes warned and finite."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from dualseg.data.weights import compute_class_weights
from dualseg.errors import InputError


def test_inverse_and_median():
    counts = np.array([600, 300, 100])
    inv = compute_class_weights(counts, "inverse")
    torch.testing.assert_close(inv, torch.tensor([1000 / (3 * 600), 1000 / (3 * 300), 1000 / (3 * 100)]))
    med = compute_class_weights(counts, "median")
    torch.testing.assert_close(med, torch.tensor([0.5, 1.0, 3.0]))
    assert torch.equal(compute_class_weights(counts, "none"), torch.ones(3))
    assert inv.dtype == torch.float32


def test_absent_class_warns_and_gets_finite_weight(caplog):
    with caplog.at_level(logging.WARNING, logger="dualseg.data.weights"):
        w = compute_class_weights([10, 0, 30, 0], "median", ["bg", "wheat", "maize", "rice"])
    assert torch.isfinite(w).all()
    assert w[1] == w[3] == w.max()
    assert "wheat" in caplog.text and "rice" in caplog.text and "maize" not in caplog.text


def test_bad_inputs():
    with pytest.raises(InputError, match="unknown method 'sqrt'"):
        compute_class_weights([1, 2], "sqrt")
    with pytest.raises(InputError, match="no labelled pixel"):
        compute_class_weights([0, 0], "inverse")
