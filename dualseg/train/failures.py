"""Whose fault is an exception from ``fit``: the trial's (try the next one) or the process's (stop).

A search runs many trials in one long-lived process. Most failures belong to the hyperparameters
or the run (out of memory, a full disk, a NaN loss, bad data): the caller fails that trial, calls
:func:`release_resources` and goes on. A few leave the process unusable — a broken NCCL/gloo
communicator (a peer died or timed out) or a poisoned CUDA context (illegal address, device-side
assert): every later CUDA call or collective fails too, so the process must end (after failing
the trial). Unknown errors count as the trial's: the next trial shows whether the process is fine.
"""

from __future__ import annotations

import errno
import gc
import re
from typing import Literal

import torch

from dualseg.errors import DualsegError, TrainingError, cause_chain, one_line

Kind = Literal["trial", "fatal"]


class PeerFailure(TrainingError):
    """What every rank of a DDP run raises when one or more ranks failed in a step (``dualseg.train.agree``).

    All ranks raise it alike, so all ranks do the same afterwards; it names the failing rank and its
    error (``rank 1: out of memory (CUDA): ...``) and carries that error's ``kind`` and ``oom``.
    """

    def __init__(self, rank: int, error_type: str, line: str, kind: Kind, oom: bool,
                 others: tuple[int, ...] = ()) -> None:
        also = f" (rank{'s' * (len(others) > 1)} {', '.join(map(str, others))} failed too)" if others else ""
        super().__init__(f"rank {rank}: {line}{also}")
        self.rank, self.error_type, self.line, self.kind, self.oom, self.others = \
            rank, error_type, line, kind, oom, others

    def __reduce__(self) -> tuple[type, tuple[object, ...]]:  # picklable although __init__ takes fields
        return type(self), (self.rank, self.error_type, self.line, self.kind, self.oom, self.others)

# Lower-case message fragments of errors after which no CUDA call or collective can be trusted.
_FATAL_TEXT = (
    "illegal memory access", "illegal address", "device-side assert", "unspecified launch failure",
    "misaligned address", "cuda error: an illegal instruction", "uncorrectable ecc error",
    "nccl", "gloo", "watchdog caught collective operation timeout",
)
_OOM_TEXT = ("out of memory", "can't allocate memory", "cannot allocate memory", "cublas_status_alloc_failed")


def is_oom(exc: BaseException) -> bool:
    """CUDA/CPU out of memory, raised as ``torch.OutOfMemoryError``, ``MemoryError`` or allocator text."""
    if isinstance(exc, PeerFailure):
        return exc.oom
    if isinstance(exc, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(exc, RuntimeError) and any(t in str(exc).lower() for t in _OOM_TEXT)


def _poisoned(exc: BaseException) -> BaseException | None:
    """What left the process unusable, in ``exc``'s chain: a ``DistError``, or a RuntimeError naming
    NCCL/gloo or a poisoned CUDA context; None when nothing did."""
    for e in cause_chain(exc):
        if isinstance(e, torch.distributed.DistError):
            return e
        if isinstance(e, RuntimeError) and not isinstance(e, (torch.OutOfMemoryError, DualsegError)) and \
                any(t in str(e).lower() for t in _FATAL_TEXT):
            return e
    return None


def classify(exc: BaseException) -> Kind:
    """``"trial"``: fail this trial and go on; ``"fatal"``: fail it, then end the process.

    A broken communicator or CUDA context anywhere in the chain (an error raised while handling
    one, or ``from`` one) is fatal: whatever wrapped it, the next collective would fail too.
    """
    if isinstance(exc, PeerFailure):
        return exc.kind  # the failing rank's kind: a broken communicator there ends every rank
    if _poisoned(exc) is not None:
        return "fatal"
    if isinstance(exc, DualsegError):
        return "trial"  # our own one-line errors (NaN loss, bad data, a damaged checkpoint)
    if isinstance(exc, (ImportError, SyntaxError)):
        return "fatal"  # the code itself is broken: every trial would fail the same way
    if is_oom(exc) or isinstance(exc, OSError):
        return "trial"  # an OOM (CUDA's allocator recovers), disk quota, a vanished file
    if not isinstance(exc, Exception):
        return "fatal"  # KeyboardInterrupt, SystemExit: not a trial failure at all
    return "trial"


def _line(exc: BaseException) -> str:
    """The message's first line; a DataLoader worker's error is its folded-in last line (``one_line``)."""
    text = str(exc)
    if "Traceback" in text or isinstance(exc, DualsegError):
        return one_line(exc).removeprefix(f"{type(exc).__name__}: ")  # builtins have no module prefix
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[0] if lines else type(exc).__name__


# ProcessGroupNCCL's messages (PyTorch 2.13): the watchdog's timeout, raised in the waiting call with
# TORCH_NCCL_ASYNC_ERROR_HANDLING=2 (dualseg.train.distributed.nccl_environment), then every later
# collective on the aborted communicator.
_TIMEOUT = re.compile(r"watchdog caught collective operation timeout", re.I)
_WORK = re.compile(r"SeqNum=(\d+), OpType=(\w+).*?Timeout\(ms\)=(\d+)\).*?ran for (\d+) milliseconds", re.S)
_RANK = re.compile(r"\bRank (\d+)\]")
_ABORTED = re.compile(r"NCCL communicator was aborted on rank (\d+)", re.I)
_PEER_HINT = "a peer rank died, hung or fell behind: its log and the nccl_trace_rank_* dumps name it"


def _collective_line(exc: BaseException) -> str | None:
    """What a failed collective means, in one line, or None when ``exc`` is not one we know."""
    text = str(exc)
    if _TIMEOUT.search(text):
        work, rank = _WORK.search(text), _RANK.search(text)
        where = f" on rank {rank.group(1)}" if rank else ""
        if work is None:
            return f"collective timeout (NCCL){where}: {_PEER_HINT}"
        seq, op, limit_ms, ran_ms = work.groups()
        return (f"collective timeout (NCCL): {op} #{seq}{where} waited {int(ran_ms) / 1000:.0f} s "
                f"(timeout {int(limit_ms) / 1000:.0f} s); {_PEER_HINT}")
    aborted = _ABORTED.search(text)
    if aborted:
        return (f"collective failed (NCCL): communicator aborted on rank {aborted.group(1)} after an earlier "
                "collective failed or timed out; the process cannot run collectives any more")
    return None


def describe(exc: BaseException) -> str:
    """One line for the trial's recorded error and the job log (``out of memory (CUDA): ...``, ``OSError: ...``,
    ``collective timeout (NCCL): ALLREDUCE #12 on rank 3 waited 1800 s ...``)."""
    poisoned = _poisoned(exc)
    known = _collective_line(poisoned) if poisoned is not None else None
    if known is not None:
        return known
    line = _line(exc)
    if isinstance(exc, DualsegError):
        return line
    if is_oom(exc):
        where = "CUDA" if isinstance(exc, torch.OutOfMemoryError) or "cuda" in line.lower() else "host"
        # torch's CUDA message goes on with allocator statistics; what and how much is the first two sentences
        short = ". ".join(line.split(". ")[:2]) if where == "CUDA" else line
        return f"out of memory ({where})" + (f": {short}" if short != type(exc).__name__ else "")
    if isinstance(exc, OSError) and exc.strerror:
        name = f": {exc.filename}" if exc.filename else ""
        return f"{type(exc).__name__}: {exc.strerror}{name}"
    return f"{type(exc).__name__}: {line}" if line != type(exc).__name__ else line


def release_resources(exc: BaseException | None = None) -> None:
    """Free what a failed trial held: the failed frames' locals, Python garbage, cached CUDA blocks.

    Pass the caught exception: its traceback keeps every frame of the failed ``fit`` alive (model,
    optimizer, batches); clearing them is what lets the memory go while the exception is handled.
    """
    if exc is not None:
        tb = exc.__traceback__
        while tb is not None:
            try:
                tb.tb_frame.clear()
            except RuntimeError:  # a frame still executing (the caller's own): nothing to free there
                pass
            tb = tb.tb_next
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        try:
            torch.cuda.synchronize()
        except RuntimeError:  # a poisoned context (classify() says fatal): nothing more to free
            return
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


__all__ = ["Kind", "PeerFailure", "classify", "describe", "environment_error", "is_oom", "release_resources"]


# A full or broken file system is the cluster's fault, not the trial's: the same trial succeeds once
# space (or the file server) is back, so it must neither be failed nor counted towards hpc.max_failed.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.ESTALE, errno.EROFS})


def environment_error(exc: BaseException) -> OSError | None:
    """The disk-full / quota / I/O / stale-handle / read-only error anywhere in ``exc``'s cause chain, if any."""
    return next((e for e in cause_chain(exc) if isinstance(e, OSError) and e.errno in ENVIRONMENT_ERRNOS), None)
