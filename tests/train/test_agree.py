"""Ranks agree on a failure: one rank's error raises the same PeerFailure on every rank, in seconds.

2-process gloo like ``test_distributed``; the caller owns the group (as hpc/worker.py does) with a
60 s timeout, so a rank left waiting in a collective would show as a lag of a minute, not seconds.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from dualseg.config import Config, ModelConfig, to_dict
from dualseg.model import build_model
from dualseg.train.agree import forward_syncs
from dualseg.train.steps import evaluate_batches, train_epoch

WORKER = r"""
import errno, json, sys, time, torch
torch.set_num_threads(1)
from torch import nn
import dualseg.model as model_mod
import dualseg.train.runstate as runstate_mod
from dualseg.config import Config, from_dict
from dualseg.errors import InputError
from dualseg.train import fit, setup_logging
from dualseg.train.distributed import cleanup, init_distributed
from dualseg.train.failures import classify, describe, is_oom, release_resources
setup_logging()
cfg, out_path, scenario = from_dict(Config, json.loads(sys.argv[1])), sys.argv[2], sys.argv[3]
info = init_distributed("cpu", timeout_s=60)  # one group for every trial of this process
rank, out = info.rank, {}

def fail(exc):
    out["injected_at"] = time.time()
    raise exc() if callable(exc) else exc  # a function raises its own (real) error

class Boom(nn.Module):  # the model, failing in its `when` forward call (training or eval mode) on rank 1
    def __init__(self, inner, training, when, exc):
        super().__init__()
        self.inner, self.training_calls, self.when, self.exc, self.calls = inner, training, when, exc, 0
    def forward(self, *args, **kwargs):
        if self.training == self.training_calls and rank == 1:
            self.calls += 1
            if self.calls == self.when:
                fail(self.exc)
        return self.inner(*args, **kwargs)

class Flaky:  # a loader raising at its `fail_at`-th batch (over all epochs) and/or stopping after `length`
    def __init__(self, loader, fail_at=None, length=None, exc=None):
        self.loader, self.fail_at, self.exc, self.seen = loader, fail_at, exc, 0
        self.length = len(loader) if length is None else length
    def __len__(self):
        return self.length
    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == self.length:
                return
            if self.seen == self.fail_at:
                fail(self.exc)
            self.seen += 1
            yield batch

def oom():
    torch.empty(1 << 50, dtype=torch.uint8)  # the real allocator's error

real_build, real_train, real_eval = model_mod.build_model, runstate_mod.train_loader, runstate_mod.eval_loader
def boom(training, when, exc):
    model_mod.build_model = lambda *a, **k: Boom(real_build(*a, **k), training, when, exc)
def flaky_train(at):  # 2 steps per epoch: batch 1 is the step of DDP's bucket rebuild, batch 2 epoch 1's first
    def make(*a, **k):
        loader, sampler, gen = real_train(*a, **k)
        damaged = InputError("data: tile t03: chunk (0, 2) of s2 is damaged (crc mismatch)")
        return (Flaky(loader, fail_at=at, exc=damaged) if rank == 1 else loader), sampler, gen
    runstate_mod.train_loader = make
def uneven_eval(*a, **k):  # rank 1 holds one validation batch more than rank 0 and fails in it
    loader = real_eval(*a, **k)
    if rank == 0:
        return Flaky(loader, length=len(loader) - 1)
    return Flaky(loader, fail_at=len(loader) - 1, exc=OSError(errno.EIO, "Input/output error", "/data/t05.zarr"))

callback, should_stop = None, None
if scenario == "forward":
    boom(True, 2, oom)
elif scenario == "fatal":
    boom(True, 1, RuntimeError("CUDA error: an illegal memory access was encountered"))
elif scenario == "loader":
    flaky_train(1)
elif scenario == "loader_later":
    flaky_train(2)
elif scenario == "validation":
    boom(False, 2, ValueError("tile t05: no S2 date left after cloud masking"))
elif scenario == "uneven":
    runstate_mod.eval_loader = uneven_eval
elif scenario == "callback":
    def callback(epoch, metrics):
        if rank == 0:
            fail(ConnectionError("server closed the connection unexpectedly"))
        return False
elif scenario == "poll":
    calls = []
    def should_stop():  # rank 0 only; call 3 is the first check step of epoch 0
        calls.append(1)
        return len(calls) == 3 and fail(OSError(errno.ENOENT, "No such file or directory", "/tmp/stop-flag"))
t0 = time.time()
try:
    fit(cfg, overrides={"train.run_name": "bad"}, callback=callback, should_stop=should_stop)
except Exception as exc:
    out.update(raised_at=time.time(), type=type(exc).__name__, message=str(exc), describe=describe(exc),
               kind=classify(exc), oom=is_oom(exc), cause=type(exc.__cause__).__name__ if exc.__cause__ else None)
    release_resources(exc)
out["fit_s"] = time.time() - t0
model_mod.build_model, runstate_mod.train_loader, runstate_mod.eval_loader = real_build, real_train, real_eval
res = fit(cfg, overrides={"train.run_name": "good", "train.epochs": 1})  # the next trial, same group
clocks = ("train_time_s", "val_time_s")
out["good"] = [res.stopped, [{k: v for k, v in h.items() if k not in clocks} for h in res.history]]
cleanup(info)
open(out_path, "w").write(json.dumps(out))
"""

EXPECT = {  # scenario: (failing rank, its error's one line (start), kind, oom, cause on the failing rank)
    "forward": (1, "out of memory (host): ", "trial", True, "RuntimeError"),  # the allocator line follows
    "fatal": (1, "RuntimeError: CUDA error: an illegal memory access was encountered", "fatal", False, "RuntimeError"),
    "loader": (1, "data: tile t03: chunk (0, 2) of s2 is damaged (crc mismatch)", "trial", False, "InputError"),
    "loader_later": (1, "data: tile t03: chunk (0, 2) of s2 is damaged (crc mismatch)", "trial", False, "InputError"),
    "validation": (1, "ValueError: tile t05: no S2 date left after cloud masking", "trial", False, "ValueError"),
    "uneven": (1, "OSError: Input/output error: /data/t05.zarr", "trial", False, "OSError"),
    "callback": (0, "ConnectionError: server closed the connection unexpectedly", "trial", False, "ConnectionError"),
    "poll": (0, "FileNotFoundError: No such file or directory: /tmp/stop-flag", "trial", False, "FileNotFoundError"),
}


@pytest.mark.parametrize("scenario", list(EXPECT))
def test_one_rank_fails_every_rank_raises_at_once_then_the_next_trial_runs(
    make_cfg: Callable[..., Config], tmp_path: Path, scenario: str, two_ranks: Callable[..., list[str]]
) -> None:
    cfg = make_cfg(run_name="x", epochs=2)
    two_ranks(WORKER, json.dumps(to_dict(cfg)), f"{tmp_path}/out.{{rank}}", scenario, timeout=200)
    outs = [json.loads(Path(f"{tmp_path}/out.{rank}").read_text()) for rank in range(2)]
    failing, line, kind, oom, cause = EXPECT[scenario]
    injected = outs[failing]["injected_at"]
    for rank, out in enumerate(outs):
        assert out["type"] == "PeerFailure", out
        assert out["message"] == out["describe"] == outs[0]["message"]  # what hpc records: one line, same everywhere
        assert out["message"].startswith(f"rank {failing}: {line}"), out["message"]
        assert (out["kind"], out["oom"]) == (kind, oom)
        assert out["cause"] == (cause if rank == failing else None)
        assert out["raised_at"] - injected < 15, out  # seconds, not the 60 s process-group timeout
    good = [out["good"] for out in outs]
    assert good[0][0] == "completed" and len(good[0][1]) == 1 and good[0][1][0]["val_loss"] > 0
    assert good[0] == good[1]  # the next trial in the same group: identical all-reduced results


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4, dropout=0.0), 2, 3, 3)


def _batches(n: int, fail_at: int | None = None) -> Iterator[dict[str, Any]]:
    g = torch.Generator().manual_seed(0)
    for i in range(n):
        if i == fail_at:
            raise ValueError(f"batch {i} damaged")
        yield {"s1": torch.randn(2, 2, 4, 16, 16, generator=g), "s2": torch.randn(2, 3, 3, 16, 16, generator=g),
               "s1_pad": torch.zeros(2, 4, dtype=torch.bool), "s2_pad": torch.zeros(2, 3, dtype=torch.bool),
               "s1_doy": torch.arange(4).repeat(2, 1) * 30, "s2_doy": torch.arange(3).repeat(2, 1) * 40,
               "labels": torch.randint(0, 3, (2, 16, 16), generator=g)}


def test_ranks_agree_before_forward_only_while_ddp_forward_has_a_collective(tmp_path: Path) -> None:
    """DDP's forward broadcasts once (the bucket rebuild after the first backward) and, for a model with
    buffers, every step: only there train_epoch agrees before forward too (our models have no buffers)."""
    model = _model()
    assert [name for name, _ in model.named_buffers()] == []
    assert not forward_syncs(model)  # no DDP: no collective in forward
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(model)
        seen = []
        for batch in _batches(3):
            seen.append(forward_syncs(ddp))
            logits = ddp(batch["s1"], batch["s2"], batch["s1_pad"], batch["s2_pad"],
                         s1_doy=batch["s1_doy"], s2_doy=batch["s2_doy"])
            logits.float().mean().backward()
        assert seen == [True, True, False]  # steady state: the one flags all-reduce before backward
        del ddp
    finally:
        dist.destroy_process_group()


def test_alone_the_original_error_is_raised() -> None:
    """No process group: no PeerFailure, the error itself (with its own type) leaves both loops."""
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="batch 2 damaged"):
        train_epoch(model, _batches(4, fail_at=2), opt, None, weight=None, ignore_index=255, device=cpu, amp=False)
    with pytest.raises(ValueError, match="batch 1 damaged"):
        evaluate_batches(model, _batches(3, fail_at=1), num_classes=3, weight=None, ignore_index=255, device=cpu)
    t0 = time.perf_counter()
    done = train_epoch(model, _batches(3), opt, None, weight=None, ignore_index=255, device=cpu, amp=False)
    assert done.steps == 3 and torch.isfinite(done.loss_sum) and time.perf_counter() - t0 < 60
