"""A collated batch through the model: the few lines training, evaluation and maps must share.

Moving only what the model uses, calling it with the stream tensors by name, and the autocast
policy are the same in the training step and in inference; here, below both, so a map needs
nothing of the trainer. A batch of loader items (stored pixels, :mod:`dualseg.data.prepare`) is
moved as stored (half the bytes for integers) and turned into model inputs on the device here, so
the training step, evaluation and maps share that step too.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from dualseg.data.prepare import is_raw, prepare, raw_keys

_KEYS_S1 = ("s1", "s1_pad", "s1_doy")
_KEYS_S2 = ("s2", "s2_pad", "s2_doy")


def to_device(batch: dict[str, Any], device: torch.device, streams: str = "both") -> dict[str, Any]:
    """Move only what the model and loss use (non-blocking); an unused stream is not copied at all.

    A raw batch (collated loader items) is moved as stored and prepared on ``device``."""
    s1, s2 = streams in ("both", "s1"), streams in ("both", "s2")
    if is_raw(batch):
        keys = ("labels",) + (raw_keys("s1") if s1 else ()) + (raw_keys("s2") if s2 else ())
        moved = {k: batch[k].to(device, non_blocking=True) for k in keys if batch.get(k) is not None}
        if batch.get("aug") is not None:
            moved["aug"] = batch["aug"]  # (B,2) on the host: which items to turn/flip, read there
        return prepare(moved, streams)
    keys = ("labels",) + (_KEYS_S1 if s1 else ()) + (_KEYS_S2 if s2 else ())
    return {k: batch[k].to(device, non_blocking=True) for k in keys if batch.get(k) is not None}


def forward(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
    """Logits (B,K,H,W) from a collated, device-resident batch."""
    return model(
        batch.get("s1"), batch.get("s2"), batch.get("s1_pad"), batch.get("s2_pad"),
        s1_doy=batch.get("s1_doy"), s2_doy=batch.get("s2_doy"),
    )


def autocast_ctx(device: torch.device, amp: bool) -> Any:
    """bf16 autocast on CUDA (no GradScaler needed for bf16); nothing on CPU."""
    if amp and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()
