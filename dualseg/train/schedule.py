"""Linear warm-up then cosine annealing, stepped per optimisation step.

Per-step (not per-epoch) stepping keeps the warm-up smooth when an epoch has few large steps, and a
plain ``LambdaLR`` keeps the scheduler's state dict to a step counter and base LRs, which
``torch.load(weights_only=True)`` accepts.
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.0) -> float:
    """LR multiplier at ``step``: ramps (step+1)/warmup, then cosine from 1 down to ``min_ratio``."""
    if total_steps <= 0:
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


class _WarmupCosine:
    """Picklable-free callable (LambdaLR keeps only its step count in the state dict)."""

    def __init__(self, total_steps: int, warmup_steps: int, min_ratio: float) -> None:
        self.total_steps, self.warmup_steps, self.min_ratio = total_steps, warmup_steps, min_ratio

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.min_ratio)


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int, min_ratio: float = 0.0
) -> LambdaLR:
    """Per-step warm-up + cosine schedule over ``total_steps``."""
    warmup_steps = min(warmup_steps, max(0, total_steps - 1))
    return LambdaLR(optimizer, _WarmupCosine(total_steps, warmup_steps, min_ratio))
