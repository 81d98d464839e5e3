"""Ranks agree on a failure in one small collective, so one rank's error never strands the others.

Every rank of a DDP run must enter the same collectives (the gradient all-reduce in ``backward``,
validation's sums, the epoch's decisions). A non-fatal exception on one rank (out of memory on one
GPU, a damaged tile, an error in its callback) used to make that rank leave ``fit`` while the others
waited in the next collective until the process-group timeout. Instead the risky work of a step
runs inside a try, then every rank all-reduces (MAX) a small flag tensor whose first entry says
"failed here", before the next collective a failed rank would miss. When it is set, every rank
gathers who failed how (only then: no cost in the common case) and raises the same
:class:`~dualseg.train.failures.PeerFailure`. Alone (no process group, or ``sync=False``) the
original exception is raised unchanged.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable
from typing import NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from dualseg.train.distributed import DistInfo, _active, all_reduce_max
from dualseg.train.failures import PeerFailure, classify, describe, is_oom


def agree(flags: torch.Tensor, error: Exception | None, sync: bool = True) -> list[float]:
    """All-reduce (MAX) ``flags`` after setting ``flags[0]`` to "this rank failed"; return the host values.

    When any rank failed, every rank raises the same PeerFailure (alone: ``error`` itself). The
    other entries are the caller's "any rank says yes" flags (non-finite loss, stop requested).
    """
    if error is not None and not (sync and _active()):
        raise error
    flags[0] = 0.0 if error is None else 1.0
    if sync:
        all_reduce_max(flags)
    values: list[float] = flags.tolist()  # the one host sync: each rank must know before going on
    if values[0]:
        raise_together(error)
    return values


def raise_together(error: Exception | None) -> NoReturn:
    """Called on every rank once the flags say some rank failed: raise one PeerFailure everywhere.

    The failing rank keeps its own error as ``__cause__``. With several failing ranks the message
    names the one whose error matters most (a fatal one, then an out-of-memory, then the lowest rank).
    """
    mine = None
    if error is not None:
        mine = (dist.get_rank(), type(error).__name__, describe(error), classify(error), is_oom(error))
        traceback.clear_frames(error.__traceback__)  # the failed step's tensors (activations) go now
    reports: list[tuple[int, str, str, str, bool] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(reports, mine)
    failed = sorted((r for r in reports if r is not None), key=lambda r: (r[3] != "fatal", not r[4], r[0]))
    rank, name, line, kind, oom = failed[0]
    others = tuple(sorted(r[0] for r in failed[1:]))
    raise PeerFailure(rank, name, line, "fatal" if kind == "fatal" else "trial", oom, others) from error


def forward_syncs(model: nn.Module) -> bool:
    """Whether ``model``'s next training forward may run a collective, the same answer on every rank.

    DDP rebuilds its gradient buckets in the first forward after the first backward (a broadcast
    from rank 0) and broadcasts buffers in forward when the module has any: a rank that failed
    before that forward must not leave the others in it, so ranks agree before such a forward too
    (for our buffer-free models: the first two steps of each ``fit``).
    """
    if not isinstance(model, DistributedDataParallel):
        return False
    return not getattr(model, "_has_rebuilt_buckets", False) or model.will_sync_module_buffers()


def decide(fn: Callable[[], object] | None, info: DistInfo) -> bool:
    """``fn()`` where given; rank 0's answer on every rank, or the same PeerFailure if it raised anywhere.

    One all-reduce, like the broadcast of rank 0's answer it replaces: rank 0's epoch callback (it
    talks to the study's database) or its ``should_stop`` poll may raise without leaving the other
    ranks waiting for that answer.
    """
    error: Exception | None = None
    answer = False
    if fn is not None:
        try:
            answer = bool(fn())
        except Exception as exc:  # noqa: BLE001 - raised on every rank by agree()
            error = exc
    flags = torch.tensor([0.0, float(answer and info.is_main)], dtype=torch.float32, device=info.device)
    return bool(agree(flags, error)[1])


__all__ = ["agree", "decide", "forward_syncs", "raise_together"]
