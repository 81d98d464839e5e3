"""2-process gloo DDP from torchrun-style env vars (as the HPC layer exports them), on 127.0.0.1."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dualseg.config import Config, to_dict
from dualseg.errors import InputError
from dualseg.train import fit, tblog
from dualseg.train.distributed import TRACE_FILE_VARS, all_reduce_sum, init_distributed, nccl_environment

TB = [tblog.FOLDER] if tblog.available() else []  # event files, with the tensorboard extra

WORKER = r"""
import json, sys, torch
torch.set_num_threads(1)
from dualseg.config import Config, from_dict
from dualseg.train import fit, setup_logging
setup_logging()
from dualseg.train.distributed import init_distributed
import torch.distributed as dist
cfg = from_dict(Config, json.loads(sys.argv[1]))
rank = int(__import__("os").environ["RANK"])
res = fit(cfg, callback=lambda e, m: rank == 0 and e == 1)  # only rank 0 wants to stop: broadcast
assert not dist.is_initialized(), "fit must destroy the group it created"
out = {"stopped": res.stopped, "epochs_run": res.epochs_run, "history": res.history,
       "nccl_env": "TORCH_NCCL_ASYNC_ERROR_HANDLING" in __import__("os").environ}
open(sys.argv[2], "w").write(json.dumps(out))
"""


RESUME_WORKER = r"""
import json, os, sys, torch
torch.set_num_threads(1)
from dualseg.config import Config, from_dict
from dualseg.train import fit
cfg = from_dict(Config, json.loads(sys.argv[1]))
stop_at, calls = int(sys.argv[3]), []
res = fit(cfg, should_stop=lambda: calls.append(1) or len(calls) == stop_at)  # polled on rank 0 only
out = {"stopped": res.stopped, "history": [(h["train_loss"], h["val_loss"]) for h in res.history]}
open(sys.argv[2], "w").write(json.dumps(out))
"""


def _run(two_ranks: Callable[..., list[str]], script: str, cfg: Config, out: Path, *extra: str) -> list[dict]:
    """``script`` on 2 gloo ranks; each rank's JSON output."""
    two_ranks(script, json.dumps(to_dict(cfg)), f"{out}.{{rank}}", *extra)
    return _outs(out)


def _outs(out: Path) -> list[dict]:
    return [json.loads(Path(f"{out}.{rank}").read_text()) for rank in range(2)]


def test_two_rank_gloo_identical_metrics(make_cfg: Callable[..., Config], tmp_path: Path,
                                         two_ranks: Callable[..., list[str]]) -> None:
    cfg = make_cfg(run_name="ddp", epochs=3)
    logs = two_ranks(WORKER, json.dumps(to_dict(cfg)), f"{tmp_path / 'rank'}.{{rank}}")
    r0, r1 = _outs(tmp_path / "rank")
    assert r0["stopped"] == r1["stopped"] == "callback" and r0["epochs_run"] == r1["epochs_run"] == 2
    assert not r0["nccl_env"] and not r1["nccl_env"]  # a gloo group leaves the NCCL settings alone
    clocks = ("val_time_s", "train_time_s")  # each rank's own wall time
    strip = lambda hs: [{k: v for k, v in h.items() if k not in clocks} for h in hs]  # noqa: E731
    assert strip(r0["history"]) == strip(r1["history"])  # all-reduced: bit-identical on both ranks
    assert all(h["train_time_s"] > 0 and h["val_time_s"] > 0 for h in r0["history"] + r1["history"])
    assert r0["history"][0]["val_loss"] > 0
    # sharded validation counts every pixel exactly once (no DistributedSampler padding duplicates)
    single = fit(make_cfg(run_name="one", epochs=1))
    count = lambda h: sum(map(sum, h["val_confusion_matrix"]))  # noqa: E731
    assert count(r0["history"][0]) == count(single.history[0]) > 0
    # every log line says which rank wrote it
    assert "[rank 1/2 node 0" in logs[1] and "[rank 0/2 node 0" in logs[0]
    run_dir = Path(cfg.train.scratch) / "ddp"  # type: ignore[arg-type]
    assert sorted(p.name for p in run_dir.iterdir()) == ["best.pt", "last.prev.pt", "last.pt", "metrics.jsonl", *TB]
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 2  # rank 0 only
    if TB:  # one event file, by rank 0 (a second rank would add its own)
        assert len(list((run_dir / tblog.FOLDER).glob("events.out.tfevents.*"))) == 1


def test_two_rank_exact_resume_mid_epoch(make_cfg: Callable[..., Config], tmp_path: Path,
                                         two_ranks: Callable[..., list[str]]) -> None:
    """2 steps/epoch per rank; should_stop calls: 1 start-up, 2 before the first step, 3-4 steps, 5-6
    validation batches, 7 after epoch 0, 8 = epoch 1 after 1 step: every rank's RNG and loss sum resume."""
    straight = _run(two_ranks, RESUME_WORKER, make_cfg(run_name="straight", epochs=3), tmp_path / "a", "0")
    first = _run(two_ranks, RESUME_WORKER, make_cfg(run_name="split", epochs=3), tmp_path / "b", "8")
    assert first[0]["stopped"] == first[1]["stopped"] == "interrupted" and len(first[0]["history"]) == 1
    second = _run(two_ranks, RESUME_WORKER, make_cfg(run_name="split", epochs=3), tmp_path / "c", "0")
    assert second[0]["stopped"] == "completed"
    flat = lambda h: [v for pair in h for v in pair]  # noqa: E731
    assert flat(second[0]["history"]) == pytest.approx(flat(straight[0]["history"]), abs=1e-6)
    assert second[1]["history"] == second[0]["history"]


def test_single_process_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.owns_group) == (0, 1, False)
    assert not dist.is_initialized()
    t = torch.ones(2)
    assert torch.equal(all_reduce_sum(t), torch.ones(2))  # identity without a group


def test_incomplete_env_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(InputError, match="MASTER_ADDR, MASTER_PORT not set"):
        init_distributed("cpu")
    monkeypatch.setenv("RANK", "x")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    with pytest.raises(InputError, match="RANK='x' is not an integer"):
        init_distributed("cpu")


def test_nccl_environment_sets_only_what_the_user_did_not() -> None:
    assert nccl_environment({}) == {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "2", "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
                                    "TORCH_FR_BUFFER_SIZE": "2000"}
    user = {"TORCH_NCCL_ASYNC_ERROR_HANDLING": "3", "TORCH_NCCL_DUMP_ON_TIMEOUT": "0"}
    assert nccl_environment(user) == {"TORCH_FR_BUFFER_SIZE": "2000"}
    # a legacy or alternative name counts as set: torch reads the first one present, ours must not win
    legacy = {"NCCL_ASYNC_ERROR_HANDLING": "1", "TORCH_NCCL_TRACE_BUFFER_SIZE": "0"}
    assert nccl_environment(legacy) == {"TORCH_NCCL_DUMP_ON_TIMEOUT": "1"}
    # dumps into the job's trace directory, under both names torch reads; unless the user chose a file
    added = nccl_environment({}, trace_dir="/scratch/s/logs/nccl-81234")
    assert [added[v] for v in TRACE_FILE_VARS] == ["/scratch/s/logs/nccl-81234/nccl_trace_rank_"] * 2
    assert not set(TRACE_FILE_VARS) & set(nccl_environment({"TORCH_NCCL_DEBUG_INFO_TEMP_FILE": "/x/t_"}, "/d"))
    assert not set(TRACE_FILE_VARS) & set(nccl_environment({}))  # no directory: torch's default


def test_bad_local_rank_fails_before_any_side_effect(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No group, no trace directory, no NCCL variable: the error comes first."""
    for k in ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "TORCH_NCCL_DUMP_ON_TIMEOUT", "TORCH_FR_BUFFER_SIZE"):
        monkeypatch.delenv(k, raising=False)
    env = {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1", "LOCAL_RANK": "z"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(InputError, match="LOCAL_RANK='z' is not an integer"):
        init_distributed("cpu", trace_dir=tmp_path / "nccl")
    assert not dist.is_initialized() and not (tmp_path / "nccl").exists()
    assert "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ
    with pytest.raises(InputError, match="timeout must be > 0"):
        init_distributed("cpu", timeout_s=0)


def test_existing_group_is_reused_not_destroyed(tmp_path: Path) -> None:
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        info = init_distributed("cpu")
        assert not info.owns_group and info.world_size == 1
        from dualseg.train.distributed import cleanup

        cleanup(info)
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


FAILING_WORKER = r"""
import json, sys, torch
torch.set_num_threads(1)
import torch.distributed as dist
from dualseg.config import Config, apply_overrides, from_dict
from dualseg.errors import TrainingError
from dualseg.train import fit, setup_logging
from dualseg.train.distributed import cleanup, init_distributed
from dualseg.train.failures import classify, release_resources
setup_logging()
cfg = from_dict(Config, json.loads(sys.argv[1]))
out = {}
owner = sys.argv[3] == "caller"
info = init_distributed("cpu") if owner else None  # as hpc/worker.py: one group for all trials
try:  # a trial whose loss turns NaN: every rank raises at the same check
    fit(cfg, overrides={"train.lr": 1e30, "train.run_name": "nan"})
except TrainingError as exc:
    out["kind"] = classify(exc)
    release_resources(exc)
out["group_after_failure"] = dist.is_initialized()
def in_validation():
    return sys._getframe(1).f_code.co_name == "evaluate_batches"
if owner:  # (re-creating a group on the same env:// port in one process races: not what callers do)
    res = fit(cfg, should_stop=in_validation)  # the next trial: stopped during validation of epoch 0
    out["stopped"], out["epochs_run"] = res.stopped, res.epochs_run
    res = fit(cfg)  # resumed: re-validates epoch 0, no step lost
    out["resumed"] = [res.stopped, [h["epoch"] for h in res.history]]
    cleanup(info)
    cleanup(info)  # idempotent: every exit path may call it
cleanup()
out["group_at_exit"] = dist.is_initialized()
open(sys.argv[2], "w").write(json.dumps(out))
"""


@pytest.mark.parametrize("owner", ["fit", "caller"])
def test_failed_trial_then_next_trial_and_clean_exit(
    make_cfg: Callable[..., Config], tmp_path: Path, owner: str, two_ranks: Callable[..., list[str]]
) -> None:
    """A trial raising on both ranks, a stop during validation, then exit 0 with no gloo abort at exit."""
    cfg = make_cfg(run_name="trial", epochs=2)
    logs = two_ranks(FAILING_WORKER, json.dumps(to_dict(cfg)), f"{tmp_path}/out.{{rank}}", owner)
    for log in logs:
        assert "terminate called" not in log and "Traceback" not in log, log[-3000:]
    outs = [json.loads(Path(f"{tmp_path}/out.{rank}").read_text()) for rank in range(2)]
    for out in outs:
        assert out["kind"] == "trial" and out["group_after_failure"] == (owner == "caller")
        assert out["group_at_exit"] is False
        if owner == "caller":
            assert out["stopped"] == "interrupted" and out["epochs_run"] == 0
            assert out["resumed"] == ["completed", [0, 1]]
    if owner == "caller":
        assert "interrupted during validation (epoch 0 step 2)" in logs[0]
