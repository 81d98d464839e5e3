"""Early stopping patience and state round-trip."""

from __future__ import annotations

import math

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
