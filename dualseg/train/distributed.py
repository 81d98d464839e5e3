"""torch.distributed from torchrun-style environment variables, and the few collectives we need.

The HPC layer exports SLURM state as ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/
``MASTER_PORT`` (submitit's TorchDistributedEnvironment); torchrun sets the same. Without them we run
as a single process with no process group, so notebooks and tests need no launcher. Every helper is
a no-op (or identity) without a process group, which keeps the trainer free of ``if world > 1``.
Which GPU a rank takes is :mod:`dualseg.train.device`'s decision; how NCCL reports a failed
collective (an exception on the trial, a flight-recorder dump) is set by :func:`nccl_environment`.
"""

from __future__ import annotations

import datetime
import gc
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from dualseg.errors import InputError
from dualseg.train.device import DeviceChoice, choose_device, visible_device_count

log = logging.getLogger(__name__)

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


# What dualseg sets for NCCL unless the user set it (under any of its names: torch reads the first
# one set). Names, values and defaults are PyTorch 2.13's (c10d/ProcessGroupNCCL.hpp, FlightRecorder.hpp):
# - ASYNC_ERROR_HANDLING 2 (CleanUpOnly; torch's default is 3, SkipCleanUp): on a failed or timed-out
#   collective the watchdog aborts the communicators instead of killing the process, so the waiting
#   Python call raises DistBackendError ("Watchdog caught collective operation timeout", then "NCCL
#   communicator was aborted") and the search records the trial's failure. The heartbeat monitor still
#   ends a process that does not get there (TORCH_NCCL_HEARTBEAT_TIMEOUT_SEC, 8 min, after the dump)
#   unless it destroyed its process group.
# - DUMP_ON_TIMEOUT 1 with a flight-recorder buffer: every rank dumps its last collectives (which
#   one hung, on which rank) on a timeout or error; TORCH_FR_DUMP_TEMP_FILE puts the dumps in
#   ``trace_dir`` instead of the node-local /tmp.
# TORCH_NCCL_BLOCKING_WAIT stays unset: it turns the watchdog (and those dumps) off.
NCCL_SETTINGS: tuple[tuple[tuple[str, ...], str], ...] = (
    (("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"), "2"),
    (("TORCH_NCCL_DUMP_ON_TIMEOUT",), "1"),
    (("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE"), "2000"),
)
TRACE_FILE_VARS = ("TORCH_FR_DUMP_TEMP_FILE", "TORCH_NCCL_DEBUG_INFO_TEMP_FILE")
TRACE_FILE_PREFIX = "nccl_trace_rank_"  # torch appends the global rank


def nccl_environment(env: Mapping[str, str], trace_dir: str | Path | None = None) -> dict[str, str]:
    """The variables to add to ``env`` before an NCCL process group is made (see ``NCCL_SETTINGS``).

    Pure: a variable the user set, under any of its names, is left out, so the user's choice wins.
    With ``trace_dir``, flight-recorder dumps go to ``<trace_dir>/nccl_trace_rank_<rank>``.
    """
    add: dict[str, str] = {}
    for names, value in NCCL_SETTINGS:
        if not any(n in env for n in names):
            add[names[0]] = value
    if trace_dir is not None and not any(n in env for n in TRACE_FILE_VARS):
        prefix = str(Path(trace_dir) / TRACE_FILE_PREFIX)
        add.update(dict.fromkeys(TRACE_FILE_VARS, prefix))  # both names, one value: no order question
    return add


def _place(requested: str, world: int) -> DeviceChoice:
    choice = choose_device(os.environ, visible_device_count(), world, requested)
    if choice.index is not None:
        torch.cuda.set_device(choice.index)
    return choice


def init_distributed(
    device: str = "auto", timeout_s: float = 1800.0, *, trace_dir: str | Path | None = None
) -> DistInfo:
    """Join (or reuse) the process group described by the environment.

    An already initialised group (the caller did it) is reused and left alone. With no torchrun
    variables, or ``WORLD_SIZE=1``, we stay a single process. The device comes from
    :func:`~dualseg.train.device.choose_device`; backend nccl on CUDA (after :func:`nccl_environment`,
    its flight-recorder dumps in ``trace_dir``), gloo on CPU. ``timeout_s`` bounds every collective:
    past it a rank waiting on a dead or stalled peer fails instead of hanging.
    """
    if timeout_s <= 0:
        raise InputError(f"distributed: the collective timeout must be > 0 s, got {timeout_s:g}")
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        choice = _place(device, world)
        return DistInfo(rank, world, choice.local_rank, choice.device, owns_group=False)
    present = [k for k in _REQUIRED if k in os.environ]
    world = _int_env("WORLD_SIZE") if "WORLD_SIZE" in os.environ else 1
    if world <= 1:
        choice = _place(device, 1)
        return DistInfo(0, 1, choice.local_rank, choice.device, owns_group=False)
    missing = [k for k in _REQUIRED if k not in present]
    if missing:
        raise InputError(f"distributed: WORLD_SIZE={world} but {', '.join(missing)} not set in the environment")
    rank = _int_env("RANK")
    if not 0 <= rank < world:
        raise InputError(f"distributed: RANK={rank} outside [0, WORLD_SIZE={world})")
    choice = _place(device, world)
    log.info("rank %d/%d on %s (%s), %s backend", rank, world, choice.device, choice.why, choice.backend)
    kwargs: dict[str, Any] = {}
    if choice.backend == "nccl":
        added = nccl_environment(os.environ, trace_dir)
        if trace_dir is not None and TRACE_FILE_VARS[0] in added:
            Path(trace_dir).mkdir(parents=True, exist_ok=True)
        os.environ.update(added)
        if added:
            log.info("NCCL settings (export one to override): %s", " ".join(f"{k}={v}" for k, v in added.items()))
        kwargs["device_id"] = choice.device
    dist.init_process_group(
        backend=choice.backend,
        init_method="env://",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    return DistInfo(rank, world, choice.local_rank, choice.device, owns_group=True)


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
