"""torch.distributed from torchrun-style environment variables, and the few collectives we need.

The HPC layer exports SLURM state as ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT`` (submitit's TorchDistributedEnvironment); torchrun sets the same. Without them we run
as a single process with no process group, so notebooks and tests need no launcher. Every helper is
a no-op (or identity) without a process group, which keeps the trainer free of ``if world > 1``.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dualseg.errors import InputError

_REQUIRED = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass
class DistInfo:
    """Where this process sits; ``owns_group`` says whether we must destroy the group at the end."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _int_env(name: str) -> int:
    raw = os.environ[name]
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"distributed: environment variable {name}={raw!r} is not an integer") from None


def resolve_device(device: str, local_rank: int) -> torch.device:
    """``auto`` -> cuda:LOCAL_RANK when a GPU is visible, else cpu (one process per GPU)."""
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"config: train.device must be auto, cpu or cuda, got {device!r}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise InputError("config: train.device=cuda but no CUDA device is available")
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise InputError(f"distributed: LOCAL_RANK={local_rank} but only {n} CUDA device(s) visible")
    torch.cuda.set_device(local_rank)
    return torch.device("cuda", local_rank)


def init_distributed(device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Join (or reuse) the process group described by the environment.

    An already initialised group (the caller did it) is reused and left alone. With no torchrun
    variables, or ``WORLD_SIZE=1``, we stay a single process. Backend: nccl on CUDA, gloo on CPU.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local_rank = _int_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        return DistInfo(rank, world, local_rank, resolve_device(device, local_rank), owns_group=False)
    present = [k for k in _REQUIRED if k in os.environ]
    world = _int_env("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world <= 1:
        local_rank = _int_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
        return DistInfo(0, 1, local_rank, resolve_device(device, local_rank), owns_group=False)
    missing = [k for k in _REQUIRED if k not in present]
    if missing:
        raise InputError(f"distributed: WORLD_SIZE={world} but {', '.join(missing)} not set in the environment")
    rank = _int_env("RANK")
    if not 0 <= rank < world:
        raise InputError(f"distributed: RANK={rank} outside [0, WORLD_SIZE={world})")
    local_rank = _int_env("LOCAL_RANK") if "LOCAL_RANK" in os.environ else 0
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {"device_id": dev} if dev.type == "cuda" else {}
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return DistInfo(rank, world, local_rank, dev, owns_group=True)


def cleanup(info: DistInfo | None = None) -> None:
    """Destroy the process group if ``info`` says we created it (``None``: whatever group exists).

    Idempotent, so every exit path (normal, exception, interrupt) can call it. Garbage is collected
    first: a DDP reducer left in a reference cycle holds the group, and freeing it at interpreter
    exit, after the group is gone, is what aborts a process with ``terminate called without an
    active exception``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if info is not None and not info.owns_group:
        return
    gc.collect()
    dist.destroy_process_group()


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum across ranks (identity in a single process); returns ``t``."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """In-place max across ranks (used for "any rank says yes" flags)."""
    if _active():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def broadcast_flag(flag: bool, device: torch.device, src: int = 0) -> bool:
    """Rank ``src``'s boolean, on every rank."""
    if not _active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=src)
    return bool(t.item())


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank ``src``'s picklable ``obj`` on every rank (small control data, e.g. which file to resume)."""
    if not _active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def on_main(write: Callable[[], None], message: str, info: DistInfo) -> None:
    """Run ``write`` on rank 0 only; if it raises (disk quota, ...) every rank raises instead of hanging.

    Rank 0 re-raises its own exception; the others raise ``TrainingError(message)``.
    """
    from dualseg.errors import TrainingError

    error: Exception | None = None
    if info.is_main:
        try:
            write()
        except Exception as exc:  # noqa: BLE001 - re-raised below, after telling the other ranks
            error = exc
    if broadcast_flag(error is not None, info.device):
        if error is not None:
            raise error
        raise TrainingError(f"{message} (rank 0's log has the error)")


def barrier() -> None:
    if _active():
        dist.barrier()


def make_gather(device: torch.device) -> Callable[[np.ndarray], list[np.ndarray]] | None:
    """An all-gather of equally shaped numpy arrays (for merging per-rank band statistics).

    One collective; every rank must pass the same shape (float64 on the wire, so sums and
    sums of squares keep their precision). Returns ``None`` in a single process, matching
    ``build_data(gather=None)``.
    """
    if not _active():
        return None

    def gather(arr: np.ndarray) -> list[np.ndarray]:
        src = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64)).to(device)
        out = [torch.empty_like(src) for _ in range(dist.get_world_size())]
        dist.all_gather(out, src)
        return [o.cpu().numpy() for o in out]

    return gather
