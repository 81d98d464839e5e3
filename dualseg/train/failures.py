"""Whose fault is an exception from ``fit``: the trial's (try the next one) or the process's (stop).

A search runs many trials in one long-lived process. Most failures belong to the hyperparameters
or the run (out of memory, a full disk, a NaN loss, bad data): the caller fails that trial, calls
:func:`release_resources` and goes on. A few leave the process unusable — a broken NCCL/gloo
communicator (a peer died or timed out) or a poisoned CUDA context (illegal address, device-side
assert): every later CUDA call or collective fails too, so the process must end (after failing
the trial). Unknown errors count as the trial's: the next trial shows whether the process is fine.
"""

from __future__ import annotations

import gc
from typing import Literal

import torch

from dualseg.errors import DualsegError, TrainingError, one_line

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


def classify(exc: BaseException) -> Kind:
    """``"trial"``: fail this trial and go on; ``"fatal"``: fail it, then end the process."""
    if isinstance(exc, PeerFailure):
        return exc.kind  # the failing rank's kind: a broken communicator there ends every rank
    if isinstance(exc, DualsegError):
        return "trial"  # our own one-line errors (NaN loss, bad data, a damaged checkpoint)
    if isinstance(exc, (ImportError, SyntaxError)):
        return "fatal"  # the code itself is broken: every trial would fail the same way
    if isinstance(exc, torch.distributed.DistError):
        return "fatal"  # DistBackendError / DistNetworkError / DistStoreError: the communicator is gone
    text = str(exc).lower()
    if isinstance(exc, RuntimeError) and not isinstance(exc, torch.OutOfMemoryError) and \
            any(t in text for t in _FATAL_TEXT):
        return "fatal"
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


def describe(exc: BaseException) -> str:
    """One line for the trial's recorded error and the job log (``out of memory (CUDA): ...``, ``OSError: ...``)."""
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


__all__ = ["Kind", "PeerFailure", "classify", "describe", "is_oom", "release_resources"]
