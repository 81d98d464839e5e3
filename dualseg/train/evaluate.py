"""Score a saved checkpoint on a split, with the model shape, classes and class weights it was trained with.

The scores are those of the maps :mod:`dualseg.predict` writes: both come from :mod:`dualseg.infer`
(one inference path, below training and prediction).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dualseg.config import Config, from_dict, to_dict
from dualseg.errors import InputError, TrainingError
from dualseg.infer.checkpoint import load_checkpoint, load_model_state
from dualseg.infer.window import InputSpec, load_input, score_map, tile_logits, to_map
from dualseg.train.distributed import all_reduce_sum, cleanup, init_distributed
from dualseg.train.metrics import majority_baseline, metrics_from_confusion
from dualseg.train.steps import weighted_ce_sums

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


DEFAULT_OVERLAP = 0.25  # the same default as ``python -m dualseg.predict --overlap``


def evaluate_checkpoint(
    path: str | Path, cfg: Config | None = None, split: str = "test", overlap: float = DEFAULT_OVERLAP
) -> dict[str, Any]:
    """Loss, OA, mIoU, per-class IoU/F1 and the confusion matrix of ``path`` on ``split``.

    Scores the maps of the one inference path (:func:`dualseg.infer.tile_logits`: sliding windows
    with ``overlap`` over whole tiles, blended logits), so the mIoU of maps written by
    ``python -m dualseg.predict`` with the same overlap equals this mIoU. With ``overlap=0`` on tiles
    whose sides are multiples of the patch size the windows are the validation grid, and the
    numbers are training's ``val_*``. ``cfg`` defaults to the config stored in the checkpoint (data
    paths may be overridden by passing one). The loss uses the class weights saved at training
    time. Runs on one process, or sharded by tile with all-reduced counts under a process group.
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
    from dualseg.data import build_data
    from dualseg.data.read import read_labels
    from dualseg.model import build_model
    from dualseg.model.layout import resolve_memory_format, set_memory_format

    info = init_distributed(cfg.train.device)
    k = 0
    try:
        bundle = build_data(cfg.data, splits=(split,), gather=None, device=info.device)
        meta = state.get("data", {})
        _check_compatible(meta, bundle, path, split)
        _check_stats(meta, bundle, path)
        ds = bundle.datasets.get(split)
        if ds is None or len(ds) == 0:
            raise InputError(f"evaluate: the {split} split has no samples (check data.{split}_tiles / splits file)")
        k, ignore = bundle.num_classes, bundle.ignore_index
        model = build_model(cfg.model, bundle.s1_channels, bundle.s2_channels, k)
        load_model_state(model, state["model"], source=f"checkpoint {path}")
        model.to(info.device).eval()
        set_memory_format(model, resolve_memory_format(cfg.train.memory_format, info.device))
        weight = meta.get("class_weights")
        weight = weight.to(torch.float32) if isinstance(weight, torch.Tensor) else None
        spec = InputSpec(mean=ds.mean, std=ds.std, date_encoding=cfg.data.date_encoding, max_t=cfg.data.max_t,
                         streams=cfg.model.streams)
        # cm (K*K), loss sum, weight sum, unpredicted labelled pixels: one all-reduce at the end
        packed = torch.zeros(k * k + 3, dtype=torch.float64)
        for tile in ds.tiles[info.rank :: info.world_size]:
            inp = load_input(tile, spec)
            logits = tile_logits(model, inp, spec, patch=cfg.data.patch_size, overlap=overlap,
                                 batch_size=cfg.train.batch_size, device=info.device, amp=cfg.train.amp)
            labels = torch.from_numpy(read_labels(tile))
            classes, _, _ = to_map(logits, inp.has_input(spec.streams), ignore, dtype=np.int64)
            cm, unpredicted = score_map(classes, labels.numpy(), k, ignore)
            ls, ws = weighted_ce_sums(logits[None], labels[None], weight, ignore)
            packed += torch.cat([cm.flatten().to(torch.float64),
                                 torch.tensor([float(ls), float(ws), float(unpredicted)], dtype=torch.float64)])
        packed = packed.to(info.device)
        all_reduce_sum(packed)  # float64 holds counts exactly up to 2**53 pixels
        packed = packed.cpu()
    finally:
        cleanup(info)
    cm_total = packed[: k * k].round().to(torch.int64).view(k, k)
    loss_sum, wsum, unpredicted_total = packed[-3].item(), packed[-2].item(), int(packed[-1].item())
    if int(cm_total.sum()) == 0:
        raise InputError(f"evaluate: the {split} split has no labelled pixel (all ignore_index)")
    m = metrics_from_confusion(cm_total)
    return {
        "split": split,
        "checkpoint": str(path),
        "epoch": int(state.get("epoch", 0)) - 1,
        "loss": loss_sum / wsum if wsum > 0 else float("nan"),
        **m,
        "class_names": list(meta.get("class_names", bundle.class_names)),
        "majority_baseline": majority_baseline(cm_total),
        "overlap": overlap,
        "unpredicted": unpredicted_total,  # labelled pixels without any valid input: no class in the map
        "tiles": list(bundle.tiles.get(split, [])),
    }


def evaluate_ensemble(paths: list[str | Path], cfg: Config, split: str = "test",
                      overlap: float = DEFAULT_OVERLAP) -> dict[str, Any]:
    """The ensemble of checkpoints ``paths`` (mean of their probabilities, :mod:`dualseg.infer.members`)
    scored on ``split`` of ``cfg.data`` like :func:`evaluate_checkpoint` scores one model. One process."""
    from dualseg.data import build_data
    from dualseg.data.read import read_labels
    from dualseg.infer.members import load_members, mean_probs

    device = "cuda" if cfg.train.device != "cpu" and torch.cuda.is_available() else "cpu"
    files = load_members(paths)
    members = [(f, f.build(device)) for f in files]
    first = files[0]
    state = load_checkpoint(Path(paths[0]))
    weight = (state.get("data") or {}).get("class_weights")
    weight = weight.to(torch.float32) if isinstance(weight, torch.Tensor) else None
    bundle = build_data(cfg.data, splits=(split,), gather=None)
    k, ignore = first.num_classes, first.ignore_index
    cm_total = torch.zeros(k, k, dtype=torch.int64)
    loss_sum = wsum = 0.0
    unpredicted_total = 0
    for tile in bundle.datasets[split].tiles:
        probs, has_input = mean_probs(members, tile, overlap=overlap, batch_size=cfg.train.batch_size,
                                      device=device)
        log_probs = probs.clamp_min(1e-12).log()  # softmax(log p) = p: the ensemble's logits
        labels = torch.from_numpy(read_labels(tile))
        classes, _, _ = to_map(log_probs, has_input, ignore, dtype=np.int64)
        cm, unpredicted = score_map(classes, labels.numpy(), k, ignore)
        ls, ws = weighted_ce_sums(log_probs[None], labels[None], weight, ignore)
        cm_total += cm.to(torch.int64)
        loss_sum, wsum, unpredicted_total = loss_sum + float(ls), wsum + float(ws), unpredicted_total + unpredicted
    if int(cm_total.sum()) == 0:
        raise InputError(f"evaluate: the {split} split has no labelled pixel (all ignore_index)")
    return {"split": split, "members": [str(p) for p in paths], "loss": loss_sum / wsum if wsum > 0 else float("nan"),
            **metrics_from_confusion(cm_total), "class_names": list(first.class_names), "overlap": overlap,
            "unpredicted": unpredicted_total, "tiles": [t.name for t in bundle.datasets[split].tiles]}
