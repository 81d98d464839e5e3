"""Statistics backend: CuPy only once a test kernel ran, numpy with one warning otherwise, pools freed.

No GPU here: a stand-in ``cupy`` module (numpy underneath, a failure wherever a real CuPy fails on a
broken site) exercises our selection and fallback logic, not CuPy. The statistics must equal numpy's.
"""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

from dualseg.data import build_data
from dualseg.data.backend import get_xp, is_cupy_error, run_stats
from dualseg.errors import InputError


class CUDARuntimeError(RuntimeError):
    __module__ = "cupy_backends.cuda.api.runtime"  # where CuPy's CUDA runtime errors come from


class CompileException(Exception):
    __module__ = "cupy.cuda.compiler"


class CUDADriverError(RuntimeError):
    __module__ = "cupy.cuda.driver"


FAILURES: dict[str, tuple[str, Exception]] = {
    "driver": ("count", CUDARuntimeError("cudaErrorInsufficientDriver: CUDA driver version is insufficient for "
                                         "CUDA runtime version")),
    "nvrtc": ("nvrtc", RuntimeError("CuPy failed to load libnvrtc.so.12: OSError: libnvrtc.so.12: cannot open "
                                    "shared object file: No such file or directory")),
    "ptx": ("kernel", CUDADriverError("CUDA_ERROR_UNSUPPORTED_PTX_VERSION: the provided PTX was compiled with an "
                                      "unsupported toolchain.")),
    "compile": ("kernel", CompileException("nvrtc: error: invalid value for --gpu-architecture (-arch)")),
}


def fake_cupy(devices: int = 1, fail: str | None = None, error: Exception | None = None) -> types.ModuleType:
    """A ``cupy`` stand-in: numpy arrays, CuPy's selection API, ``error`` raised at step ``fail``
    (count | nvrtc | kernel | pass); ``calls`` records device selections and pool frees."""
    calls: dict[str, list[Any]] = {"use": [], "free": []}

    def step(name: str) -> None:
        if fail == name and error is not None:
            raise error

    def device_count() -> int:
        step("count")
        return devices

    class Device:
        def __init__(self, index: int) -> None:
            self.index = index

        def use(self) -> None:
            calls["use"].append(self.index)

    def nvrtc_version() -> tuple[int, int]:
        step("nvrtc")
        return (12, 4)

    def elementwise(in_params: str, out_params: str, operation: str, name: str) -> Callable[[np.ndarray], np.ndarray]:
        assert operation == "y = x * x + 1.0"

        def kernel(x: np.ndarray) -> np.ndarray:
            step("kernel")
            return x * x + 1.0

        return kernel

    def pool(kind: str) -> types.SimpleNamespace:
        return types.SimpleNamespace(free_all_blocks=lambda: calls["free"].append(kind))

    def asarray(a: Any, *args: Any, **kwargs: Any) -> np.ndarray:
        step("pass")
        return np.asarray(a, *args, **kwargs)

    mod = types.ModuleType("cupy")
    mod.__dict__.update(
        cuda=types.SimpleNamespace(runtime=types.SimpleNamespace(getDeviceCount=device_count), Device=Device,
                                   nvrtc=types.SimpleNamespace(getVersion=nvrtc_version)),
        ElementwiseKernel=elementwise, asarray=asarray, calls=calls,
        get_default_memory_pool=lambda: pool("device"), get_default_pinned_memory_pool=lambda: pool("pinned"),
        __getattr__=lambda name: getattr(np, name),  # the rest of the array API: numpy's
    )
    return mod


@pytest.fixture
def tiles(tmp_path, data):
    # format version 1: these tests compare the float kernel on (fake) CuPy with numpy; on numpy a
    # version-2 tile is reduced from its integers (exact values, not their float32 roundings)
    root = data.write_root(tmp_path / "tiles", n=5, version=1)
    return lambda **kw: data.cfg(root, **kw)


def _stats(cfg: Any, device: torch.device | None = None) -> Any:
    return build_data(cfg, splits=("train",), cache=False, device=device).stats


def _assert_same(a: Any, b: Any, exact: bool = True) -> None:
    for key in ("s1", "s2"):
        for field in ("mean", "std", "count"):
            if exact:
                np.testing.assert_array_equal(getattr(a, field)[key], getattr(b, field)[key])
            else:
                np.testing.assert_allclose(getattr(a, field)[key], getattr(b, field)[key], rtol=1e-9)
    np.testing.assert_array_equal(a.class_counts, b.class_counts)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize("case", sorted(FAILURES))
def test_broken_cupy_falls_back_to_numpy_with_one_warning(case, tiles, monkeypatch, caplog) -> None:
    fail, error = FAILURES[case]
    cp = fake_cupy(fail=fail, error=error)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    reference = _stats(tiles(stats_backend="numpy"))
    with caplog.at_level(logging.WARNING):
        got = _stats(tiles(stats_backend="auto"), torch.device("cuda", 0))
        assert get_xp("auto", 0) is np  # a later trial in the same process: numpy, no second warning
    _assert_same(got, reference)
    (line,) = _warnings(caplog)
    assert line.startswith("data.stats_backend=auto: CuPy cannot run here (") and str(error).split(":")[0] in line
    with pytest.raises(InputError, match=r"data.stats_backend=cupy but CuPy cannot run here: "):
        _stats(tiles(stats_backend="cupy"), torch.device("cuda", 0))


def test_working_cupy_runs_on_the_trainers_gpu_and_frees_its_pools(tiles, monkeypatch, caplog) -> None:
    cp = fake_cupy(devices=4)
    monkeypatch.setitem(sys.modules, "cupy", cp)
    reference = _stats(tiles(stats_backend="numpy"))
    with caplog.at_level(logging.WARNING):
        got = _stats(tiles(stats_backend="auto"), torch.device("cuda", 2))
    _assert_same(got, reference, exact=False)  # the generic (CuPy) kernel path: same float64 moments
    assert not _warnings(caplog)
    assert set(cp.calls["use"]) == {2}  # the device the trainer uses, not CuPy's default 0
    assert sorted(cp.calls["free"]) == ["device", "pinned"]  # once each, after the pass


def test_cupy_error_during_the_pass_recomputes_on_numpy(tiles, monkeypatch, caplog) -> None:
    cp = fake_cupy(fail="pass", error=CUDADriverError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access"))
    monkeypatch.setitem(sys.modules, "cupy", cp)
    reference = _stats(tiles(stats_backend="numpy"))
    with caplog.at_level(logging.WARNING):
        got = _stats(tiles(stats_backend="auto"), torch.device("cuda", 1))
        assert get_xp("auto", 1) is np  # not tried again on that device
    _assert_same(got, reference)
    (line,) = _warnings(caplog)
    assert "CuPy failed (CUDADriverError: CUDA_ERROR_ILLEGAL_ADDRESS" in line and "on numpy instead" in line
    assert sorted(cp.calls["free"]) == ["device", "pinned"]  # freed on the failing path too


def test_no_gpu_or_a_cpu_trainer_means_numpy_silently(tiles, monkeypatch, caplog) -> None:
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(devices=0))
    with caplog.at_level(logging.WARNING):
        assert get_xp("auto") is np
        working = fake_cupy(devices=1)
        monkeypatch.setitem(sys.modules, "cupy", working)
        _stats(tiles(stats_backend="auto"), torch.device("cpu"))  # train.device=cpu: the pass stays on the CPU
    assert not _warnings(caplog) and working.calls["use"] == [] and working.calls["free"] == []
    monkeypatch.setitem(sys.modules, "cupy", fake_cupy(devices=0))
    with pytest.raises(InputError, match="CuPy cannot run here: no CUDA device visible"):
        get_xp("cupy")


def test_only_cupys_own_errors_trigger_the_fallback() -> None:
    assert is_cupy_error(CompileException("x")) and is_cupy_error(CUDARuntimeError("x"))
    assert not is_cupy_error(OSError("chunk unreadable")) and not is_cupy_error(InputError("tile t1: bad"))
    cp = fake_cupy()

    def bad_data(xp: Any) -> None:
        raise InputError("tile t1: band B04 all NaN")

    with pytest.raises(InputError, match="band B04"):  # a data error is not retried on numpy
        run_stats(cp, bad_data)
    assert sorted(cp.calls["free"]) == ["device", "pinned"]


def test_backend_selection():
    assert get_xp("numpy") is np
    try:
        import cupy  # noqa: F401

        has_cupy = True
    except ImportError:
        has_cupy = False
    if not has_cupy:
        assert get_xp("auto") is np
        with pytest.raises(InputError, match="CuPy"):
            get_xp("cupy")
