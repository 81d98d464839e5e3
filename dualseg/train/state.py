"""Small pieces of run state: config sanity checks, per-epoch seeding, what a checkpoint keeps of the data.

Per-epoch seeding makes epoch ``e`` on rank ``r`` draw the same random numbers (dropout, ...) whether
the run got there straight or through a restart, independent of the world size at save time.
"""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dualseg.config import Config
from dualseg.errors import InputError


def check_train_config(cfg: Config) -> None:
    """Reject values that would fail late (or silently) inside the loop, naming the option."""
    t = cfg.train
    checks = [
        (t.epochs >= 1, "train.epochs must be >= 1", t.epochs),
        (t.batch_size >= 1, "train.batch_size must be >= 1", t.batch_size),
        (t.lr > 0, "train.lr must be > 0", t.lr),
        (t.weight_decay >= 0, "train.weight_decay must be >= 0", t.weight_decay),
        (t.warmup_epochs >= 0, "train.warmup_epochs must be >= 0", t.warmup_epochs),
        (t.grad_clip >= 0, "train.grad_clip must be >= 0 (0 disables clipping)", t.grad_clip),
        (t.log_every >= 1, "train.log_every must be >= 1", t.log_every),
        (bool(t.run_name) and "/" not in t.run_name and t.run_name not in (".", ".."),
         "train.run_name must be a plain directory name", t.run_name),
    ]
    for ok, msg, value in checks:
        if not ok:
            raise InputError(f"config: {msg}, got {value!r}")


_VOLATILE = {"train.scratch", "train.run_name", "train.log_every", "train.device", "train.memory_format",
             "data.num_workers", "data.cache_mb", "train.tensorboard", "train.hparams"}


def config_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``key: old -> new`` for every differing leaf, ignoring ones that do not affect the result."""
    out = []
    for key in sorted(set(old) | set(new)):
        dotted = f"{prefix}{key}"
        if dotted in _VOLATILE or dotted == "hpc":
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_changes(a, b, f"{dotted}.")
        elif a != b:
            out.append(f"{dotted}: {a!r} -> {b!r}")
    return out


def epoch_seed(seed: int, rank: int, epoch: int) -> None:
    """Seed torch (CPU+CUDA), numpy and python from (seed, rank, epoch)."""
    s = int(np.random.SeedSequence([seed, rank, epoch]).generate_state(1)[0])
    torch.manual_seed(s)
    np.random.seed(s)
    random.seed(s)


def gather_rng(local: dict[str, Any]) -> list[dict[str, Any]]:
    """Every rank's RNG state (a collective; only needed for mid-epoch continuation)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [local]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, local)
    return out


def plain(obj: Any) -> Any:
    """Convert to what ``torch.load(weights_only=True)`` accepts (numpy -> tensors, dataclasses -> dicts)."""
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    raise TypeError(f"cannot store {type(obj).__name__} in a weights_only checkpoint")


def bundle_meta(bundle: Any) -> dict[str, Any]:
    """What evaluation needs from the training data: classes, channels, class weights, band stats."""
    return {
        "num_classes": int(bundle.num_classes),
        "class_names": [str(c) for c in bundle.class_names],
        "ignore_index": int(bundle.ignore_index),
        "s1_channels": int(bundle.s1_channels),
        "s2_channels": int(bundle.s2_channels),
        "class_weights": plain(getattr(bundle, "class_weights", None)),
        "stats": plain(getattr(bundle, "stats", None)),
    }
