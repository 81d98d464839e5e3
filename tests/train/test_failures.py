"""Trial failures: which errors end a trial vs the process, one-line descriptions, memory released."""

from __future__ import annotations

import errno
import gc
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from dualseg.config import Config
from dualseg.errors import InputError, TrainingError
from dualseg.model import DualStreamUNet3D
from dualseg.train import fit, read_metrics
from dualseg.train import runstate as runstate_mod
from dualseg.train import trainer as trainer_mod
from dualseg.train.failures import PeerFailure, classify, describe, is_oom, release_resources


def _alloc_error() -> RuntimeError:
    try:
        torch.empty(1 << 50, dtype=torch.uint8)  # 1 PiB: the real CPU allocator refuses it at once
    except RuntimeError as exc:
        return exc
    raise AssertionError("a 1 PiB allocation succeeded")


@pytest.mark.parametrize(("exc", "kind", "line"), [
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 8 GiB"),
     "trial", "out of memory (CUDA): CUDA out of memory. Tried to allocate 2.00 GiB"),
    (MemoryError(), "trial", "out of memory (host)"),
    (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"), "trial",
     "out of memory (CUDA): CUDA error: out of memory"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/scratch/s/trial-3/.last.pt.x.tmp"), "trial",
     "OSError: Disk quota exceeded: /scratch/s/trial-3/.last.pt.x.tmp"),
    (TrainingError("training: non-finite loss in epoch 2 (steps 1..10); stopped"), "trial",
     "training: non-finite loss in epoch 2 (steps 1..10); stopped"),
    (InputError("data: tile t07: band B04 missing"), "trial", "data: tile t07: band B04 missing"),
    (ValueError("something odd"), "trial", "ValueError: something odd"),
    (ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
                "  File x\nValueError: tile t01: chunk 3 unreadable"), "trial",  # as torch re-raises it
     "ValueError: tile t01: chunk 3 unreadable"),
    (torch.distributed.DistBackendError("NCCL communicator was aborted on rank 1"), "fatal",
     "collective failed (NCCL): communicator aborted on rank 1 after an earlier collective failed or timed out; "
     "the process cannot run collectives any more"),
    (RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"), "fatal",
     "RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer"),
    (RuntimeError("CUDA error: an illegal memory access was encountered"), "fatal",
     "RuntimeError: CUDA error: an illegal memory access was encountered"),
    (RuntimeError("CUDA error: device-side assert triggered"), "fatal",
     "RuntimeError: CUDA error: device-side assert triggered"),
    (KeyboardInterrupt(), "fatal", "KeyboardInterrupt"),
])
def test_classify_and_describe(exc: BaseException, kind: str, line: str) -> None:
    assert classify(exc) == kind
    assert describe(exc) == line and "\n" not in describe(exc)


# What ProcessGroupNCCL raises (PyTorch 2.13) with dualseg's NCCL settings (TORCH_NCCL_ASYNC_ERROR_HANDLING=2):
# the watchdog's timeout in the waiting call, then every later collective on the aborted communicator.
WATCHDOG = ("[PG ID 0 PG GUID 0(default_pg) Rank 3] Watchdog caught collective operation timeout: "
            "WorkNCCL(SeqNum=2415, OpType=ALLREDUCE, NumelIn=8192, NumelOut=8192, Timeout(ms)=1800000) "
            "ran for 1800058 milliseconds before timing out.\n"
            "Exception raised from checkTimeout at /pytorch/torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:692 "
            "(most recent call first):\nframe #0: c10::Error::Error(...)")
TIMEOUT_LINE = ("collective timeout (NCCL): ALLREDUCE #2415 on rank 3 waited 1800 s (timeout 1800 s); a peer rank "
                "died, hung or fell behind: its log and the nccl_trace_rank_* dumps name it")
ABORTED = "NCCL communicator was aborted on rank 2. Original reason for failure was: Watchdog caught collective"


def _raised_from(outer: Exception, inner: Exception) -> Exception:
    try:
        try:
            raise inner
        except Exception as exc:
            raise outer from exc
    except Exception as exc:  # noqa: BLE001 - returned for the test to classify
        return exc
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("exc", "line"), [
    (torch.distributed.DistBackendError(WATCHDOG), TIMEOUT_LINE),
    (RuntimeError(WATCHDOG), TIMEOUT_LINE),  # the same text without torch's exception class
    (torch.distributed.DistBackendError("Watchdog caught collective operation timeout: WorkNCCL(?)"),
     "collective timeout (NCCL): a peer rank died, hung or fell behind: its log and the nccl_trace_rank_* dumps "
     "name it"),
    (torch.distributed.DistBackendError(ABORTED), "collective failed (NCCL): communicator aborted on rank 2 after an "
     "earlier collective failed or timed out; the process cannot run collectives any more"),
    # wrapped by our own error, raised from (or while handling) the broken collective: still fatal, same line
    (_raised_from(TrainingError("training: epoch 3 failed"), torch.distributed.DistBackendError(WATCHDOG)),
     TIMEOUT_LINE),
    (torch.distributed.DistBackendError("NCCL error in: ProcessGroupNCCL.cpp:2010, unhandled system error\nLast error"),
     "DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:2010, unhandled system error"),
    (torch.distributed.DistNetworkError("Connection reset by peer"), "DistNetworkError: Connection reset by peer"),
])
def test_collective_failures_are_fatal_and_say_what_happened(exc: BaseException, line: str) -> None:
    assert classify(exc) == "fatal"
    assert describe(exc) == line


def test_an_error_merely_mentioning_nccl_in_our_own_message_is_the_trials() -> None:
    exc = _raised_from(InputError("config: hpc.nccl_trace: not a directory"), KeyError("x"))
    assert classify(exc) == "trial" and describe(exc) == "config: hpc.nccl_trace: not a directory"


def test_peer_failure_carries_the_failing_ranks_kind() -> None:
    """What every rank raises when one failed: its line, its kind (not TrainingError's), its OOM-ness, picklable."""
    line = "out of memory (CUDA): CUDA out of memory. Tried to allocate 2.00 GiB"
    oom = PeerFailure(1, "OutOfMemoryError", line, "trial", True)
    assert describe(oom) == str(oom) == f"rank 1: {line}"
    assert (classify(oom), is_oom(oom)) == ("trial", True)
    broken = PeerFailure(2, "DistBackendError", "DistBackendError: NCCL communicator aborted", "fatal", False, (0, 3))
    assert describe(broken) == "rank 2: DistBackendError: NCCL communicator aborted (ranks 0, 3 failed too)"
    assert (classify(broken), is_oom(broken)) == ("fatal", False)
    # "out of memory" in a line that is not an OOM does not make one; pickling keeps every field
    other = pickle.loads(pickle.dumps(PeerFailure(0, "ValueError", "ValueError: out of memory budget", "trial", False)))
    assert str(other) == "rank 0: ValueError: out of memory budget" and not is_oom(other)
    assert (other.rank, other.error_type, other.kind, other.others) == (0, "ValueError", "trial", ())


def test_real_allocator_failure_is_a_trial_oom() -> None:
    exc = _alloc_error()
    assert classify(exc) == "trial"
    assert describe(exc).startswith("out of memory (host): ") and "1125899906842624 bytes" in describe(exc)


def _live_models() -> int:
    gc.collect()
    return sum(type(o) is DualStreamUNet3D for o in gc.get_objects())


def test_out_of_memory_in_fit_then_next_trial_runs(
    make_cfg: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An allocation failure mid-epoch fails that fit; memory is freed; the next fit in the process works."""
    real = trainer_mod.train_epoch
    calls = {"n": 0}

    def step_that_runs_out(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 2:  # epoch 1: a checkpoint of epoch 0 exists
            torch.empty(1 << 50, dtype=torch.uint8)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "train_epoch", step_that_runs_out)
    before = _live_models()
    seen: list[int] = []
    real_validate = trainer_mod._Fit._validate
    monkeypatch.setattr(trainer_mod._Fit, "_validate",
                        lambda self, s: seen.append(_live_models()) or real_validate(self, s))
    try:
        fit(make_cfg(run_name="oom", epochs=2))
        raise AssertionError("fit did not raise")
    except RuntimeError as exc:
        assert classify(exc) == "trial" and describe(exc).startswith("out of memory (host)")
        release_resources(exc)
        assert seen == [before + 1]  # the count sees the run's model ...
        assert _live_models() == before  # ... which is gone while the error is still being handled
    monkeypatch.setattr(trainer_mod, "train_epoch", real)
    res = fit(make_cfg(run_name="next", epochs=1))
    assert res.stopped == "completed" and len(read_metrics(res.run_dir)) == 1
    again = fit(make_cfg(run_name="oom", epochs=2))  # the failed trial resumes from its epoch-0 checkpoint
    assert again.stopped == "completed" and [r["epoch"] for r in read_metrics(again.run_dir)] == [0, 1]


def test_memory_error_at_model_build(make_cfg: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    import dualseg.model as model_mod

    def absurd(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(model_mod, "build_model", absurd)
    with pytest.raises(MemoryError) as info:
        fit(make_cfg(run_name="wide", epochs=1))
    assert classify(info.value) == "trial" and describe(info.value) == "out of memory (host)"


def test_disk_quota_on_save_fails_the_trial_cleanly(
    make_cfg: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.EDQUOT, "Disk quota exceeded", str(args[1]))

    monkeypatch.setattr(runstate_mod, "save_checkpoint", full)
    cfg = make_cfg(run_name="quota", epochs=1)
    with pytest.raises(OSError) as info:
        fit(cfg)
    assert classify(info.value) == "trial" and describe(info.value).startswith("OSError: Disk quota exceeded: ")
    assert not list((Path(str(cfg.train.scratch)) / "quota").glob("*.pt"))  # nothing half-written
