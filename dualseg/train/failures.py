"""Which exceptions end a trial and which end the process (placeholder; replaced by the train branch)."""

from __future__ import annotations

import gc
from typing import Literal

from dualseg.errors import one_line

_FATAL = ("nccl", "gloo", "connection closed by peer", "illegal memory access", "device-side assert",
          "cuda error: unspecified launch failure", "process group")


def classify(exc: BaseException) -> Literal["trial", "fatal"]:
    text = f"{type(exc).__name__}: {exc}".lower()
    if any(word in text for word in _FATAL) and "out of memory" not in text:
        return "fatal"
    return "trial"


def is_oom(exc: BaseException) -> bool:
    text = f"{type(exc).__name__}: {exc}".lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text \
        or "outofmemory" in text


def describe(exc: BaseException) -> str:
    if is_oom(exc):
        return f"out of memory ({one_line(exc)[:200]})"
    return f"{type(exc).__name__}: {one_line(exc)[:300]}"


def release_resources() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001 - best effort
        pass
