"""bench/gpu_check.py --cpu: every part of the GPU check runs on the CPU and gives its rows, finite."""

from __future__ import annotations

import math

from bench.gpu_check import args_for, run, table


def test_cpu_run_gives_every_row_with_finite_numbers() -> None:
    rows = run(args_for(["--cpu"]))
    got = {(p, m): v for p, m, v, _, _ in rows}
    for key in [("train step", f"{w}, {f}") for w in ("samples/s", "TFLOP/s", "MFU")
                for f in ("contiguous", "channels_last")] + [
            ("train step", "channels_last / contiguous"), ("ddp", "step time DDP / without"),
            ("ddp", "all-reduce overhead"), ("statistics", "pass, numpy"), ("loader", "samples/s per core"),
            ("loader", "step samples/s, same batches"), ("loader", "cores to feed one device")]:
        assert key in got, key
        assert math.isfinite(got[key]), key
    assert all(got[k] > 0 for k in got if k[1] != "all-reduce overhead")
    text = table(rows)
    assert text.splitlines()[0] == "| part | metric | value | unit | note |" and len(text.splitlines()) == len(rows) + 2
    assert "S1 3 ch" in text  # the loader and the step use the same 3-channel S1
