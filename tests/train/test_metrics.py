"""Metrics against a confusion matrix computed by hand."""

from __future__ import annotations

import pytest
import torch

from dualseg.train.metrics import confusion_matrix, majority_baseline, metrics_from_confusion


def test_confusion_matrix_by_hand_ignores_void() -> None:
    target = torch.tensor([[0, 0, 1, 1], [2, 2, 255, 0]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 0]])
    cm = confusion_matrix(pred, target, num_classes=4, ignore_index=255)
    expected = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert torch.equal(cm, expected)


def test_metrics_by_hand_and_absent_class_excluded() -> None:
    cm = torch.tensor([[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    m = metrics_from_confusion(cm)
    assert m["oa"] == pytest.approx(5 / 7)
    # IoU: c0 = 2/(3+3-2)=0.5, c1 = 2/(2+3-2)=2/3, c2 = 1/(2+1-1)=0.5, c3 absent -> None
    assert m["iou"][:3] == pytest.approx([0.5, 2 / 3, 0.5])
    assert m["iou"][3] is None and m["f1"][3] is None
    assert m["miou"] == pytest.approx((0.5 + 2 / 3 + 0.5) / 3)
    # F1 = 2TP/(support+predicted): c0 = 4/6, c1 = 4/5, c2 = 2/3
    assert m["f1"][:3] == pytest.approx([4 / 6, 4 / 5, 2 / 3])
    assert m["support"] == [3, 2, 2, 0]


def test_predicted_but_absent_class_counts_as_zero_iou() -> None:
    cm = torch.tensor([[1, 1], [0, 0]])  # class 1 never in target but predicted once
    m = metrics_from_confusion(cm)
    assert m["iou"] == pytest.approx([0.5, 0.0])
    assert m["miou"] == pytest.approx(0.25)


def test_majority_baseline() -> None:
    cm = torch.tensor([[6, 0, 0], [1, 2, 0], [0, 0, 1]])  # supports 6, 3, 1
    b = majority_baseline(cm)
    assert b["oa"] == pytest.approx(0.6)
    assert b["miou"] == pytest.approx(0.6 / 3)
