"""Early stopping on the monitored validation metric, with state that round-trips through a checkpoint."""

from __future__ import annotations

import math
from typing import Any, Literal

Mode = Literal["min", "max"]


class EarlyStopping:
    """Stop after ``patience`` epochs without an improvement larger than ``min_delta``.

    ``mode="min"`` for losses, ``"max"`` for mIoU/OA. ``patience <= 0`` disables stopping (but still
    tracks the best value, for ``best.pt``).
    """

    def __init__(self, patience: int, min_delta: float = 0.0, mode: Mode = "min") -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be min or max, got {mode!r}")
        self.patience = patience
        self.min_delta = min_delta
        self.mode = mode
        self.best = math.inf if mode == "min" else -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0

    def _better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float, epoch: int) -> bool:
        """Record one epoch's value; returns True when it is a new best."""
        if not math.isfinite(value):
            self.bad_epochs += 1
            return False
        if self._better(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.bad_epochs >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "min_delta": self.min_delta,
            "mode": self.mode,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress; a state of the other direction (another metric) is refused."""
        mode = state.get("mode", "min")  # checkpoints before train.monitor tracked val_loss
        if mode != self.mode:
            raise ValueError(f"early-stopping state tracks a {mode}imised metric, this run a {self.mode}imised one")
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
