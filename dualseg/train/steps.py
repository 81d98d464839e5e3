"""The hot loop: one training epoch and one validation pass, lean on host-device syncs.

Per step there is no ``.item()``: the loss is accumulated on the device and checked (finite? stop
requested?) every ``check_every`` steps with a single all-reduce of two flags, so every rank stops at
the same step and a NaN never reaches a checkpoint (checkpoints are written only after a check).
Validation sums a confusion matrix plus loss/weight sums and all-reduces them in one collective.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dualseg.errors import TrainingError
from dualseg.infer.batch import autocast_ctx, forward, to_device
from dualseg.train.distributed import all_reduce_max, all_reduce_sum
from dualseg.train.metrics import confusion_matrix


def weighted_ce_sums(
    logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor | None, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted per-pixel CE, sum of the weights of the counted pixels), in float32.

    Sums instead of a mean so that ranks and batches combine exactly, and a patch that is all
    ``ignore_index`` contributes 0/0 -> 0 instead of NaN.
    """
    loss_sum = F.cross_entropy(logits.float(), labels, weight=weight, ignore_index=ignore_index, reduction="sum")
    valid = labels != ignore_index
    if weight is None:
        wsum = valid.sum().to(torch.float32)
    else:
        wsum = weight[labels.clamp(0, weight.numel() - 1)].masked_fill(~valid, 0).sum()
    return loss_sum, wsum


class StopRequested(Exception):
    """Rank 0 was asked to stop during validation; raised on every rank at the same batch."""


@dataclass
class EpochProgress:
    """Where an epoch stands: device-side loss sum and how many steps it covers."""

    loss_sum: torch.Tensor
    steps: int
    interrupted: bool = False  # returned before the end of the epoch
    stop_requested: bool = False  # stop asked at the epoch's last step (every step done; fit saves, then stops)


def train_epoch(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    *,
    weight: torch.Tensor | None,
    ignore_index: int,
    device: torch.device,
    streams: str = "both",
    amp: bool = True,
    grad_clip: float = 0.0,
    check_every: int = 10,
    total_steps: int | None = None,
    progress: EpochProgress | None = None,
    should_stop: Callable[[], bool] | None = None,
    epoch: int = 0,
    on_check: Callable[[float], None] | None = None,
    sync_ranks: bool = True,
) -> EpochProgress:
    """Run optimisation steps over ``batches``; stop early (``interrupted``) if rank 0's ``should_stop``.

    ``total_steps`` (this rank's steps in the full epoch) makes the last step a check point too.
    Raises TrainingError on a non-finite loss on any rank. ``sync_ranks=False`` keeps the checks
    local (a model outside the process group, e.g. a single-rank baseline inside a DDP benchmark).
    """
    model.train()
    state = progress or EpochProgress(torch.zeros((), dtype=torch.float64, device=device), 0)
    flags = torch.zeros(2, dtype=torch.float32, device=device)
    checked = state.steps
    for batch in batches:
        batch = to_device(batch, device, streams)
        with autocast_ctx(device, amp):
            logits = forward(model, batch)
        loss_sum, wsum = weighted_ce_sums(logits, batch["labels"], weight, ignore_index)
        loss = loss_sum / wsum.clamp_min(1e-12)
        loss.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        state.loss_sum += loss.detach()
        state.steps += 1
        last = total_steps is not None and state.steps >= total_steps
        if state.steps % check_every == 0 or last:
            flags[0] = (~torch.isfinite(state.loss_sum)).float()
            flags[1] = float(bool(should_stop())) if should_stop is not None else 0.0
            if sync_ranks:
                all_reduce_max(flags)  # one collective, one host sync per check
            bad, stop = flags.tolist()
            if bad:
                raise TrainingError(
                    f"training: non-finite loss in epoch {epoch} (steps {checked + 1}..{state.steps}); "
                    "stopped before checkpointing — lower train.lr, raise train.grad_clip or check the input data"
                )
            checked = state.steps
            if on_check is not None:
                on_check(float(state.loss_sum) / max(1, state.steps))
            if stop and last:
                state.stop_requested = True
            elif stop:
                state.interrupted = True
                return state
    if total_steps is None or state.steps < total_steps:
        # iterable ended without passing a final check point (no total given): check once more.
        flags[0] = (~torch.isfinite(state.loss_sum)).float()
        flags[1] = 0.0
        if (all_reduce_max(flags) if sync_ranks else flags)[0].item():
            raise TrainingError(f"training: non-finite loss in epoch {epoch}; stopped before checkpointing")
    return state


@torch.no_grad()
def evaluate_batches(
    model: nn.Module,
    batches: Iterable[dict[str, Any]],
    *,
    num_classes: int,
    weight: torch.Tensor | None,
    ignore_index: int,
    device: torch.device,
    streams: str = "both",
    amp: bool = True,
    should_stop: Callable[[], bool] | None = None,
    check_every: int = 10,
    poll: bool | None = None,
) -> tuple[torch.Tensor, float]:
    """Confusion matrix (K,K) int64 and weighted mean loss over all ranks' batches (all-reduced).

    Pass the bare module (not DDP): ranks may hold different numbers of validation batches.
    ``poll`` (default: ``should_stop`` given; pass it on every rank, ``should_stop`` on rank 0 only)
    checks rank 0's ``should_stop`` every ``check_every`` batches with one all-reduce, at batches that
    every rank has, and raises :class:`StopRequested` on all ranks when it says True.
    """
    model.eval()
    cm = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    wsum = torch.zeros((), dtype=torch.float64, device=device)
    checks = 0  # batch indices < checks are on every rank (shards differ by at most one batch)
    if (should_stop is not None if poll is None else poll) and isinstance(batches, Sized):
        checks = -int(all_reduce_max(torch.tensor([-len(batches)], dtype=torch.float64, device=device)).item())
    flag = torch.zeros(1, dtype=torch.float32, device=device)
    for i, batch in enumerate(batches):
        if 0 < i < checks and i % check_every == 0:
            flag[0] = float(bool(should_stop())) if should_stop is not None else 0.0
            if all_reduce_max(flag).item():
                raise StopRequested
        batch = to_device(batch, device, streams)
        with autocast_ctx(device, amp):
            logits = forward(model, batch)
        ls, ws = weighted_ce_sums(logits, batch["labels"], weight, ignore_index)
        loss_sum += ls
        wsum += ws
        cm += confusion_matrix(logits.argmax(dim=1), batch["labels"], num_classes, ignore_index)
    packed = torch.cat([cm.flatten().to(torch.float64), loss_sum.view(1), wsum.view(1)])
    all_reduce_sum(packed)  # float64 holds counts exactly up to 2**53 pixels
    cm_total = packed[:-2].round().to(torch.int64).view(num_classes, num_classes).cpu()
    total_loss, total_w = packed[-2].item(), packed[-1].item()
    return cm_total, (total_loss / total_w if total_w > 0 else float("nan"))
