"""Early stopping patience and state round-trip."""

from __future__ import annotations

import math

import pytest

from dualseg.config import MONITOR_MODES
from dualseg.train.early_stopping import EarlyStopping


def test_stops_after_patience_without_improvement() -> None:
    es = EarlyStopping(patience=2)
    assert es.step(1.0, 0) and not es.should_stop
    assert es.step(0.8, 1)
    assert not es.step(0.9, 2) and not es.should_stop
    assert not es.step(0.8, 3) and es.should_stop  # equal is not an improvement
    assert es.best == 0.8 and es.best_epoch == 1


def test_improvement_resets_and_nan_never_best() -> None:
    es = EarlyStopping(patience=2)
    es.step(1.0, 0)
    es.step(math.nan, 1)
    assert es.best == 1.0 and es.bad_epochs == 1
    es.step(0.5, 2)
    assert es.bad_epochs == 0


def test_disabled_and_state_roundtrip() -> None:
    es = EarlyStopping(patience=0)
    for e in range(10):
        es.step(1.0, e)
    assert not es.should_stop
    a = EarlyStopping(patience=3)
    a.step(2.0, 0)
    a.step(3.0, 1)
    b = EarlyStopping(patience=3)
    b.load_state_dict(a.state_dict())
    assert (b.best, b.best_epoch, b.bad_epochs) == (2.0, 0, 1)


def test_max_mode_for_accuracy_metrics_and_direction_checked_on_load() -> None:
    es = EarlyStopping(patience=1, mode="max")
    assert es.best == -math.inf
    assert es.step(0.3, 0) and es.step(0.5, 1)
    assert not es.step(0.4, 2) and es.should_stop
    assert (es.best, es.best_epoch) == (0.5, 1)
    with pytest.raises(ValueError, match="minimised metric, this run a maximised one"):
        es.load_state_dict(EarlyStopping(patience=1).state_dict())
    old = {"best": 0.7, "best_epoch": 3, "bad_epochs": 0}  # a checkpoint from before train.monitor
    fresh = EarlyStopping(patience=1)
    fresh.load_state_dict(old)
    assert fresh.best == 0.7
    assert {MONITOR_MODES[m] for m in ("val_miou", "val_oa")} == {"max"} and MONITOR_MODES["val_loss"] == "min"
