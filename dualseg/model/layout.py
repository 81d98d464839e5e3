"""Memory layout of the model's convolutions: NCHW (contiguous) or NHWC (``channels_last``).

cuDNN runs bf16 convolutions on tensor cores in NHWC; given NCHW tensors with 16-64 channels it
transposes in and out of every convolution. ``channels_last`` stores the 2-D (and per-date 3-D)
convolution weights and the input frames in NHWC once, so the layers hand NHWC to each other
(PyTorch's convolutions, GroupNorm, ReLU, ``cat`` and additions keep the layout of their inputs).
Layout changes strides, never values: the CPU tests check both layouts give the same outputs.
``train.memory_format: auto`` is channels_last on CUDA and contiguous on CPU (oneDNN on CPU gains
little here and the CPU path keeps the layout its exactness tests were written for);
``bench/gpu_check.sh`` measures both on the GPU.

Must be applied before DDP wraps the model (DDP's gradient buckets take the parameters' strides)
and before the optimizer is built (its state is allocated like the parameters).
"""

from __future__ import annotations

import torch
from torch import nn


def resolve_memory_format(option: str, device: torch.device | str) -> str:
    """``contiguous`` or ``channels_last`` for ``train.memory_format`` (checked by the config loader) on
    ``device``: auto is channels_last on CUDA."""
    if option == "auto":
        return "channels_last" if torch.device(device).type == "cuda" else "contiguous"
    return option


def set_memory_format(model: nn.Module, fmt: str) -> nn.Module:
    """Store ``model``'s 4-D/5-D weights in ``fmt`` (in place) and tell it to lay out its inputs so.

    5-D (Conv3d) weights use ``channels_last_3d``, whose ``kt == 1`` slice the per-date convolution
    runs is a channels_last 4-D weight. Returns ``model`` (a DDP or compiled wrapper is unwrapped).
    """
    last = fmt == "channels_last"
    inner = getattr(model, "module", model)
    formats = {4: torch.channels_last if last else torch.contiguous_format,
               5: torch.channels_last_3d if last else torch.contiguous_format}
    for p in inner.parameters():
        if p.dim() in formats:
            p.data = p.data.contiguous(memory_format=formats[p.dim()])
    for m in inner.modules():
        if hasattr(m, "channels_last"):
            m.channels_last = last
    return model


def frames_layout(frames: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """Frames ``(B, T, C, H, W)`` made dense: NCHW per frame, or NHWC (``flatten(0, 1)`` is then a
    channels_last ``(B*T, C, H, W)`` view, what the per-date convolutions take)."""
    if channels_last:
        return frames.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return frames.contiguous()


def like_layout(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A 4-D map made NHWC for a channels_last model (a no-op when it is, and for a contiguous model)."""
    return t.contiguous(memory_format=torch.channels_last) if channels_last else t
