"""Parameter and FLOP counts for reporting model size and MFU (model FLOPs utilisation).

FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` on one real forward (and
backward) pass, run on the ``meta`` device so estimating the cost of a full-size GPU batch takes
milliseconds and no memory on a laptop. Only matmul/conv FLOPs are counted (the convention for MFU).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

INPUT_KEYS = ("s1", "s2", "s1_pad", "s2_pad", "s1_doy", "s2_doy")


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters, counting shared tensors once."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def estimate_flops(model: nn.Module, inputs: Mapping[str, torch.Tensor | None], backward: bool = True) -> int:
    """FLOPs of one forward (+ backward if ``backward``) pass of ``model`` on a batch shaped like ``inputs``.

    ``inputs`` holds the model's forward arguments by name (extra keys such as ``labels`` are
    ignored), e.g. a collated batch. Neither ``model`` nor ``inputs`` is touched: both are copied to
    the meta device, so only shapes and the pad masks matter (padded dates are not computed, so they
    are not counted). Divide by step time and peak FLOP/s for MFU.
    """
    model = getattr(model, "module", model)  # DistributedDataParallel / compiled wrappers
    meta_model = copy.deepcopy(model).to("meta")
    meta_model.train(model.training)
    # Pad masks stay real (on the CPU): the encoder skips padded frames, so the count depends on them.
    args = {k: (v.cpu() if k.endswith("_pad") else v.to("meta")) if isinstance(v, torch.Tensor) else v
            for k, v in inputs.items() if k in INPUT_KEYS}
    counter = FlopCounterMode(display=False)
    with counter:
        out = meta_model(**args)
        if backward:
            out.float().sum().backward()
    return int(counter.get_total_flops())
