"""Which device a rank trains on, from the environment alone (a pure function, tested on any machine).

Sites bind GPUs in two ways. Per node (``--gpus-per-node``, submitit's default): every task of a
node sees all of its GPUs and picks its own with ``LOCAL_RANK``. Per task (``--gpus-per-task=1``,
``--gpu-bind``, cgroup device constraints): every task sees exactly one GPU, as index 0, whatever
its ``LOCAL_RANK`` — indexing with ``LOCAL_RANK`` there fails on local ranks 1-3. And a launcher
that exported ``RANK``/``WORLD_SIZE`` but no local rank must not send every rank to ``cuda:0``.
:func:`choose_device` decides all of these, so a wrong site setup is one named error at start-up,
not an NCCL failure (or four ranks on one GPU) later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from dualseg.errors import InputError

# LOCAL_RANK (torchrun, submitit's export), then SLURM_LOCALID: the one SLURM name this library reads,
# a fallback for launchers (a bare `srun`) that export RANK/WORLD_SIZE but no LOCAL_RANK.
LOCAL_RANK_VARS = ("LOCAL_RANK", "SLURM_LOCALID")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DeviceChoice:
    """Where a rank runs: ``index`` is the CUDA ordinal (None on CPU); ``why`` is for the log."""

    kind: Literal["cpu", "cuda"]
    index: int | None
    backend: Literal["nccl", "gloo"]
    local_rank: int
    why: str

    @property
    def device(self) -> torch.device:
        return torch.device("cpu") if self.index is None else torch.device("cuda", self.index)


def local_rank_of(env: Mapping[str, str]) -> tuple[str, int] | None:
    """``(variable, value)`` of the first local-rank variable set, or None; non-integers are named."""
    for name in LOCAL_RANK_VARS:
        raw = env.get(name)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = int(raw)
        except ValueError:
            raise InputError(f"distributed: environment variable {name}={raw!r} is not an integer") from None
        if value < 0:
            raise InputError(f"distributed: environment variable {name}={value} is negative")
        return name, value
    return None


def _visible(env: Mapping[str, str]) -> str:
    value = env.get("CUDA_VISIBLE_DEVICES")
    return f"CUDA_VISIBLE_DEVICES={value}" if value is not None else "CUDA_VISIBLE_DEVICES unset"


def choose_device(env: Mapping[str, str], device_count: int, world_size: int, requested: str) -> DeviceChoice:
    """The device and backend for one rank.

    ``requested`` is ``train.device`` (auto | cpu | cuda); ``device_count`` the CUDA devices this
    process sees (0 without CUDA). ``cpu``, or ``auto`` without CUDA: CPU with gloo. One visible
    device: that device (index 0), whatever the local rank (per-task binding). Several: the local
    rank (``LOCAL_RANK``, else ``SLURM_LOCALID``) indexes them; out of range, or unknown with
    ``world_size > 1``, is an :class:`InputError` naming the variables and ``CUDA_VISIBLE_DEVICES``.
    """
    if requested not in DEVICES:
        raise InputError(f"config: train.device must be auto, cpu or cuda, got {requested!r}")
    found = local_rank_of(env)
    local = found[1] if found is not None else 0
    if requested == "cpu":
        return DeviceChoice("cpu", None, "gloo", local, "train.device=cpu")
    if device_count <= 0:
        if requested == "cuda":
            raise InputError(f"config: train.device=cuda but no CUDA device is visible ({_visible(env)})")
        return DeviceChoice("cpu", None, "gloo", local, "no CUDA device visible")
    if device_count == 1:
        return DeviceChoice("cuda", 0, "nccl", local, f"the one CUDA device this task sees ({_visible(env)})")
    if found is None:
        if world_size > 1:
            raise InputError(
                f"distributed: WORLD_SIZE={world_size} and {device_count} CUDA devices visible ({_visible(env)}) "
                f"but neither {' nor '.join(LOCAL_RANK_VARS)} is set: cannot tell which GPU is this rank's "
                "(export LOCAL_RANK, or bind one GPU per task with --gpus-per-task=1)"
            )
        return DeviceChoice("cuda", 0, "nccl", 0, f"single process, first of {device_count} CUDA devices")
    name, value = found
    if value >= device_count:
        raise InputError(
            f"distributed: {name}={value} but only {device_count} CUDA devices are visible ({_visible(env)}): "
            "run at most one task per visible GPU (tasks per node = GPUs per node), or bind one GPU per task"
        )
    return DeviceChoice("cuda", value, "nccl", value, f"{name}={value} of {device_count} visible CUDA devices")


def visible_device_count() -> int:
    """CUDA devices this process sees (0 when CUDA is unavailable or the driver is broken)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


__all__ = ["DEVICES", "LOCAL_RANK_VARS", "DeviceChoice", "choose_device", "local_rank_of", "visible_device_count"]
