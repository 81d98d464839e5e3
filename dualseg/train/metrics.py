"""Segmentation metrics from a confusion matrix, so distributed validation only sums one (K,K) tensor.

Every rank accumulates its confusion matrix on the device; an all-reduce sums them and every rank
derives identical OA / IoU / F1 from the total. Classes absent from both target and prediction have
an undefined IoU: they are reported as ``None`` and left out of mIoU (averaging in a 0 or 1 for a
class that never occurs would make mIoU depend on which tiles happen to be in a split).
"""

from __future__ import annotations

import torch


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int, ignore_index: int) -> torch.Tensor:
    """(K,K) int64 counts, rows = target class, columns = predicted class; ignore_index pixels dropped."""
    pred = pred.reshape(-1)
    target = target.reshape(-1)
    valid = (target != ignore_index) & (target >= 0) & (target < num_classes)
    idx = target[valid].to(torch.int64) * num_classes + pred[valid].to(torch.int64)
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def metrics_from_confusion(cm: torch.Tensor) -> dict[str, object]:
    """OA, mIoU, per-class IoU/F1 (``None`` where a class is in neither target nor prediction)."""
    cm = cm.to(torch.float64).cpu()
    tp = cm.diag()
    support = cm.sum(dim=1)  # target count per class
    predicted = cm.sum(dim=0)
    union = support + predicted - tp
    total = cm.sum()
    present = union > 0
    iou = torch.where(present, tp / union.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp_min(1), torch.zeros_like(tp))
    per_iou = [float(v) if p else None for v, p in zip(iou.tolist(), present.tolist())]
    per_f1 = [float(v) if p else None for v, p in zip(f1.tolist(), present.tolist())]
    miou = float(iou[present].mean()) if bool(present.any()) else 0.0
    oa = float(tp.sum() / total) if total > 0 else 0.0
    return {
        "oa": oa,
        "miou": miou,
        "iou": per_iou,
        "f1": per_f1,
        "support": [int(v) for v in support.tolist()],
        "confusion_matrix": cm.to(torch.int64).tolist(),
    }


def majority_baseline(cm: torch.Tensor) -> dict[str, float]:
    """OA and mIoU of always predicting the most frequent target class (the bar a model must clear)."""
    cm = cm.to(torch.float64).cpu()
    support = cm.sum(dim=1)
    k = int(support.argmax())
    base = torch.zeros_like(cm)
    base[:, k] = support
    m = metrics_from_confusion(base)
    return {"oa": float(m["oa"]), "miou": float(m["miou"])}  # type: ignore[arg-type]
