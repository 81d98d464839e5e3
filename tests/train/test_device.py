"""choose_device on every site setup: per-node and per-task GPU binding, missing local rank, CPU."""

from __future__ import annotations

import pytest
import torch

from dualseg.errors import InputError
from dualseg.train.device import choose_device

PER_NODE = {"CUDA_VISIBLE_DEVICES": "0,1,2,3"}


@pytest.mark.parametrize(("env", "count", "world", "requested", "kind", "index", "backend", "local"), [
    # per-node binding (--gpus-per-node=4): LOCAL_RANK indexes the node's GPUs
    ({**PER_NODE, "LOCAL_RANK": "0"}, 4, 8, "auto", "cuda", 0, "nccl", 0),
    ({**PER_NODE, "LOCAL_RANK": "3"}, 4, 8, "auto", "cuda", 3, "nccl", 3),
    ({**PER_NODE, "LOCAL_RANK": "2"}, 4, 8, "cuda", "cuda", 2, "nccl", 2),
    # SLURM_LOCALID when no LOCAL_RANK (a bare srun); LOCAL_RANK wins when both are set
    ({**PER_NODE, "SLURM_LOCALID": "1"}, 4, 8, "auto", "cuda", 1, "nccl", 1),
    ({**PER_NODE, "LOCAL_RANK": "2", "SLURM_LOCALID": "1"}, 4, 8, "auto", "cuda", 2, "nccl", 2),
    ({**PER_NODE, "LOCAL_RANK": "", "SLURM_LOCALID": "3"}, 4, 8, "auto", "cuda", 3, "nccl", 3),
    # per-task binding (--gpus-per-task=1, --gpu-bind): one visible device, index 0, whatever the local rank
    ({"CUDA_VISIBLE_DEVICES": "2", "LOCAL_RANK": "2"}, 1, 8, "auto", "cuda", 0, "nccl", 2),
    ({"CUDA_VISIBLE_DEVICES": "0", "LOCAL_RANK": "3"}, 1, 8, "cuda", "cuda", 0, "nccl", 3),
    ({"CUDA_VISIBLE_DEVICES": "1"}, 1, 8, "auto", "cuda", 0, "nccl", 0),
    # a single process on a multi-GPU machine: the first device
    ({}, 4, 1, "auto", "cuda", 0, "nccl", 0),
    # CPU: requested, or no CUDA device; gloo either way, whatever the GPUs
    ({**PER_NODE, "LOCAL_RANK": "7"}, 4, 8, "cpu", "cpu", None, "gloo", 7),
    ({}, 4, 8, "cpu", "cpu", None, "gloo", 0),
    ({"LOCAL_RANK": "1"}, 0, 2, "auto", "cpu", None, "gloo", 1),
    ({}, 0, 4, "auto", "cpu", None, "gloo", 0),
])
def test_choice(env, count, world, requested, kind, index, backend, local) -> None:
    c = choose_device(env, count, world, requested)
    assert (c.kind, c.index, c.backend, c.local_rank) == (kind, index, backend, local)
    assert c.device == (torch.device("cpu") if kind == "cpu" else torch.device("cuda", index))
    assert c.why


@pytest.mark.parametrize(("env", "count", "world", "requested", "message"), [
    # a local rank past the visible GPUs: which variable, how many, CUDA_VISIBLE_DEVICES
    ({**PER_NODE, "LOCAL_RANK": "4"}, 4, 8, "auto",
     r"LOCAL_RANK=4 but only 4 CUDA devices are visible \(CUDA_VISIBLE_DEVICES=0,1,2,3\)"),
    ({"SLURM_LOCALID": "2"}, 2, 4, "cuda", r"SLURM_LOCALID=2 but only 2 CUDA devices .*CUDA_VISIBLE_DEVICES unset"),
    # several GPUs, several ranks, no local rank: one clear error, not every rank on cuda:0
    (PER_NODE, 4, 8, "auto", r"WORLD_SIZE=8 and 4 CUDA devices visible \(CUDA_VISIBLE_DEVICES=0,1,2,3\) "
                             r"but neither LOCAL_RANK nor SLURM_LOCALID is set"),
    # cuda requested without CUDA
    ({"CUDA_VISIBLE_DEVICES": ""}, 0, 1, "cuda",
     r"train.device=cuda but no CUDA device is visible \(CUDA_VISIBLE_DEVICES=\)"),
    # malformed values and options
    ({"LOCAL_RANK": "one"}, 4, 8, "auto", r"LOCAL_RANK='one' is not an integer"),
    ({"LOCAL_RANK": "-1"}, 4, 8, "auto", r"LOCAL_RANK=-1 is negative"),
    ({"LOCAL_RANK": "x"}, 0, 2, "cpu", r"LOCAL_RANK='x' is not an integer"),
    ({}, 1, 1, "gpu", r"train.device must be auto, cpu or cuda, got 'gpu'"),
])
def test_errors_name_the_cause(env, count, world, requested, message) -> None:
    with pytest.raises(InputError, match=message):
        choose_device(env, count, world, requested)
