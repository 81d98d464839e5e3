"""Score a saved checkpoint on a split, with the model shape, classes and class weights it was trained with."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from dualseg.config import Config, from_dict, to_dict
from dualseg.errors import InputError, TrainingError
from dualseg.train.checkpoint import load_checkpoint, load_model_state
from dualseg.train.distributed import cleanup, init_distributed
from dualseg.train.loaders import eval_loader
from dualseg.train.metrics import majority_baseline, metrics_from_confusion
from dualseg.train.steps import evaluate_batches

log = logging.getLogger(__name__)


def _check_compatible(meta: dict[str, Any], bundle: Any, path: Path, split: str) -> None:
    """The split must have the classes and channels the checkpoint was trained on."""
    for key in ("num_classes", "s1_channels", "s2_channels", "ignore_index"):
        have = int(getattr(bundle, key))
        if key in meta and int(meta[key]) != have:
            raise InputError(
                f"evaluate: the {split} data has {key}={have} but checkpoint {path} was trained with {meta[key]}"
            )


def _check_stats(meta: dict[str, Any], bundle: Any, path: Path) -> None:
    """Inputs must be normalised exactly as in training; changed train tiles would silently shift them."""
    saved = meta.get("stats") or {}
    for stream, mean in (saved.get("mean") or {}).items():
        now = torch.as_tensor(bundle.stats.mean[stream], dtype=torch.float64)
        if now.shape != mean.shape or not torch.allclose(now, mean.to(torch.float64), rtol=1e-5, atol=1e-8):
            raise InputError(
                f"evaluate: band statistics of {stream} differ from those stored in {path} "
                "(data.root / train tiles / bands changed since training?)"
            )


def evaluate_checkpoint(path: str | Path, cfg: Config | None = None, split: str = "test") -> dict[str, Any]:
    """Loss, OA, mIoU, per-class IoU/F1 and the confusion matrix of ``path`` on ``split``.

    ``cfg`` defaults to the config stored in the checkpoint (data paths may be overridden by passing
    one). The loss uses the class weights saved at training time, so it matches ``val_loss``. Runs on
    one process, or sharded with all-reduced counts if a process group / torchrun env is present.
    """
    path = Path(path)
    if split not in ("train", "val", "test"):
        raise InputError(f"evaluate: split must be train, val or test, got {split!r}")
    state = load_checkpoint(path)
    if cfg is None:
        try:
            cfg = from_dict(Config, state["config"])
        except InputError as exc:
            raise TrainingError(f"checkpoint {path}: stored config no longer valid ({exc})") from None
    elif to_dict(cfg.model) != state["config"].get("model"):
        log.warning("evaluate: cfg.model differs from the checkpoint's; loading may fail on shape")
    from dualseg.data import build_data, collate
    from dualseg.model import build_model

    info = init_distributed(cfg.train.device)
    try:
        bundle = build_data(cfg.data, splits=(split,), gather=None)
        meta = state.get("data", {})
        _check_compatible(meta, bundle, path, split)
        _check_stats(meta, bundle, path)
        ds = bundle.datasets.get(split)
        if ds is None or len(ds) == 0:
            raise InputError(f"evaluate: the {split} split has no samples (check data.{split}_tiles / splits file)")
        model = build_model(cfg.model, bundle.s1_channels, bundle.s2_channels, bundle.num_classes)
        load_model_state(model, state["model"], source=f"checkpoint {path}")
        model.to(info.device)
        weight = meta.get("class_weights")
        weight = weight.to(info.device, torch.float32) if isinstance(weight, torch.Tensor) else None
        loader = eval_loader(
            ds, collate, batch_size=cfg.train.batch_size, rank=info.rank, world_size=info.world_size,
            num_workers=cfg.data.num_workers, pin_memory=info.device.type == "cuda", max_t=cfg.data.max_t,
        )
        cm, loss = evaluate_batches(
            model, loader, num_classes=bundle.num_classes, weight=weight, ignore_index=bundle.ignore_index,
            device=info.device, streams=cfg.model.streams, amp=cfg.train.amp,
        )
    finally:
        cleanup(info)
    if int(cm.sum()) == 0:
        raise InputError(f"evaluate: the {split} split has no labelled pixel (all ignore_index)")
    m = metrics_from_confusion(cm)
    return {
        "split": split,
        "checkpoint": str(path),
        "epoch": int(state.get("epoch", 0)) - 1,
        "loss": loss,
        **m,
        "class_names": list(meta.get("class_names", bundle.class_names)),
        "majority_baseline": majority_baseline(cm),
    }
