"""The array module of the band-statistics pass: numpy, or CuPy once it has proved it runs here.

Seeing a GPU is not enough: with NVRTC missing, or a driver older than CuPy's CUDA toolkit, the
first kernel fails inside the statistics pass, and every trial of a search fails the same way. So
selection runs a reduction and an NVRTC-compiled elementwise kernel on the device the trainer uses;
on any failure ``auto`` takes numpy with one warning naming why (``cupy`` makes it an error). A
CuPy error during the pass itself still costs only a numpy recomputation (:func:`run_stats`), and
CuPy's memory pools are emptied after it, so the training that follows has the GPU memory.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

import numpy as np

from dualseg.errors import InputError

log = logging.getLogger("dualseg.data.stats")

T = TypeVar("T")
NO_DEVICE = "no CUDA device visible"
# (CuPy module, device index) -> None when CuPy works there, else why not; probed once per process
_PROBED: dict[tuple[Any, int | None], str | None] = {}


def _reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def probe(cp: Any, device: int | None) -> str | None:
    """None when CuPy runs kernels on ``device`` (None: its current one), else the reason it does not."""
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return NO_DEVICE
    except Exception as exc:  # noqa: BLE001 - no driver, no device, driver too old: all mean "not here"
        return NO_DEVICE if "nodevice" in str(exc).replace(" ", "").lower() else _reason(exc)
    try:
        if device is not None:
            cp.cuda.Device(device).use()
        cp.cuda.nvrtc.getVersion()  # the runtime compiler every CuPy kernel goes through
        a = cp.arange(4, dtype=cp.float64)
        total = float(a.sum())  # a reduction kernel: launches, and the driver runs this toolkit's code
        square = cp.ElementwiseKernel("float64 x", "float64 y", "y = x * x + 1.0", "dualseg_probe")
        squares = float(square(a).sum())  # compiled from source by NVRTC
    except Exception as exc:  # noqa: BLE001 - whatever fails, numpy is the answer; the reason is logged
        return _reason(exc)
    if (total, squares) != (6.0, 18.0):
        return f"test kernels returned {total:g} and {squares:g} instead of 6 and 18"
    return None


def _installed() -> bool:
    if "cupy" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("cupy") is not None
    except (ImportError, ValueError):  # a broken installation: let the import say what is wrong
        return True


def get_xp(backend: str = "auto", device: int | None = None) -> ModuleType:
    """``numpy``, or ``cupy`` on CUDA device ``device`` when it works there ("auto") or must ("cupy").

    ``backend`` is ``data.stats_backend`` (the config's Literal: auto | numpy | cupy). The probe
    runs once per process and device; a failed one is logged once (not when there is simply no GPU).
    """
    if backend == "numpy":
        return np
    if not _installed():
        if backend == "cupy":
            raise InputError("data.stats_backend=cupy but CuPy is not installed")
        return np
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - installed but broken (missing CUDA libraries): numpy
        cp: Any = None
        why: str | None = f"import cupy failed: {_reason(exc)}"
    else:
        cp, why = cupy, None
    key = (cp, device)
    if key not in _PROBED:
        _PROBED[key] = why if why is not None else probe(cp, device)
        if _PROBED[key] not in (None, NO_DEVICE) and backend == "auto":
            log.warning("data.stats_backend=auto: CuPy cannot run here (%s); band statistics on numpy", _PROBED[key])
    why = _PROBED[key]
    if why is None:
        if device is not None:
            cp.cuda.Device(device).use()  # CuPy's current device is per thread: set it where the pass runs
        return cp
    if backend == "cupy":
        raise InputError(f"data.stats_backend=cupy but CuPy cannot run here: {why}")
    return np


def is_cupy_error(exc: BaseException) -> bool:
    """Raised by CuPy or its CUDA bindings (a compile error, a CUDA runtime/driver error, its OOM)."""
    return type(exc).__module__.split(".")[0] in ("cupy", "cupy_backends")


def free_pools(xp: ModuleType) -> None:
    """Give CuPy's cached device and pinned host blocks back, so training can use that memory."""
    if xp is np:
        return
    xp.get_default_memory_pool().free_all_blocks()
    xp.get_default_pinned_memory_pool().free_all_blocks()


def run_stats(xp: ModuleType, work: Callable[[ModuleType], T], device: int | None = None) -> T:
    """``work(xp)``, then CuPy's pools freed; a CuPy error inside means ``work(numpy)`` (one warning,
    and CuPy is not tried again on this device in this process)."""
    if xp is np:
        return work(np)
    try:
        return work(xp)
    except Exception as exc:
        if not is_cupy_error(exc):
            raise
        why = _reason(exc)
        _PROBED[(xp, device)] = why
        log.warning("band statistics: CuPy failed (%s); computing them on numpy instead", why)
    finally:
        try:
            free_pools(xp)
        except Exception as exc:  # noqa: BLE001 - a broken CuPy must not hide the pass's own outcome
            log.debug("could not free CuPy's memory pools: %s", _reason(exc))
    return work(np)


__all__ = ["NO_DEVICE", "free_pools", "get_xp", "is_cupy_error", "probe", "run_stats"]
