"""Trainer overhead and CPU DDP scaling, measured side by side in one run.

1. Train-step throughput of ``dualseg.train.steps.train_epoch`` (the trainer's hot loop: weighted CE,
   finite/stop checks, grad clipping, scheduler) vs a bare PyTorch loop with the same model and batch.
   Goal: ratio >= 0.95.
2. 2-rank gloo DDP vs 1 rank on CPU, 1 thread per process, same per-rank batch (weak scaling).
   Goal: efficiency = t(1 rank) / t(2 ranks) >= 0.85.

Usage: ``python bench/bench_train.py [--steps 10] [--repeats 7] [--width 16] [--size 32]``.
Each number is the fastest of the interleaved repeats (least disturbed by other load). Needs >= 2
free cores for a meaningful part 2; the "independent processes" line shows what two busy cores
give without any communication, so the DDP cost itself can be read even on a loaded machine.
"""

from __future__ import annotations

import argparse
import os
import socket
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from dualseg.config import ModelConfig
from dualseg.model import build_model
from dualseg.train.schedule import build_scheduler
from dualseg.train.steps import train_epoch


def make_batch(b: int, size: int, t1: int = 12, t2: int = 10, k: int = 5, seed: int = 0) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    return {
        "s1": torch.randn(b, 2, t1, size, size, generator=g),
        "s2": torch.randn(b, 10, t2, size, size, generator=g),
        "s1_pad": torch.zeros(b, t1, dtype=torch.bool),
        "s2_pad": torch.zeros(b, t2, dtype=torch.bool),
        "s1_doy": torch.arange(t1).repeat(b, 1) * 30,
        "s2_doy": torch.arange(t2).repeat(b, 1) * 35,
        "labels": torch.randint(0, k, (b, size, size), generator=g),
    }


def make_model(width: int, k: int = 5) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(levels=3, base_width=width, n_heads=4, d_k=8, dropout=0.0), 2, 10, k)


def bare_loop(model: torch.nn.Module, batch: dict[str, Any], steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()
    t0 = time.perf_counter()
    for _ in range(steps):
        logits = model(batch["s1"], batch["s2"], batch["s1_pad"], batch["s2_pad"],
                       s1_doy=batch["s1_doy"], s2_doy=batch["s2_doy"])
        loss = F.cross_entropy(logits, batch["labels"])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0


def trainer_loop(model: torch.nn.Module, batch: dict[str, Any], steps: int, k: int = 5, sync: bool = True) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    sched = build_scheduler(opt, total_steps=steps, warmup_steps=2)
    weight = torch.ones(k)
    t0 = time.perf_counter()
    train_epoch(model, [batch] * steps, opt, sched, weight=weight, ignore_index=255, device=torch.device("cpu"),
                grad_clip=1.0, check_every=10, total_steps=steps, sync_ranks=sync)
    return time.perf_counter() - t0


def _ddp_worker(rank: int, world: int, port: int, args: argparse.Namespace, out: Any) -> None:
    """Per repeat, interleaved so that machine-load drift hits all three alike:
    (a) rank 0 trains alone (1 rank; rank 1 idles in a barrier), (b) both ranks train independent
    models at once (no communication: what 2 busy cores give), (c) 2-rank DDP."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = make_batch(args.batch, args.size, seed=rank)
        solo = make_model(args.width)
        ddp = torch.nn.parallel.DistributedDataParallel(make_model(args.width), gradient_as_bucket_view=True)
        trainer_loop(solo, batch, 3, sync=False)
        trainer_loop(ddp, batch, 3)  # warm-up (allocations, gloo buckets)
        times: dict[str, list[float]] = {"one": [], "indep": [], "ddp": []}
        for _ in range(args.repeats):
            dist.barrier()
            if rank == 0:
                times["one"].append(trainer_loop(solo, batch, args.steps, sync=False))
            dist.barrier()
            times["indep"].append(trainer_loop(solo, batch, args.steps, sync=False))
            dist.barrier()
            times["ddp"].append(trainer_loop(ddp, batch, args.steps))
        if rank == 0:
            out.put({k: min(v) for k, v in times.items()})
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args()
    torch.set_num_threads(1)

    batch = make_batch(args.batch, args.size)
    bare_model, tr_model = make_model(args.width), make_model(args.width)
    bare_loop(bare_model, batch, 3)
    trainer_loop(tr_model, batch, 3)
    bare_t, tr_t = [], []
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        bare_t.append(bare_loop(bare_model, batch, args.steps))
        tr_t.append(trainer_loop(tr_model, batch, args.steps))
    b, t = min(bare_t), min(tr_t)  # least-disturbed repeat: the machine is shared
    print(f"[1] bare loop     : {args.steps / b:8.2f} steps/s")
    print(f"[1] trainer loop  : {args.steps / t:8.2f} steps/s")
    print(f"[1] throughput ratio trainer/bare = {b / t:.3f}  (goal >= 0.95)")

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = mp.start_processes(_ddp_worker, args=(2, _free_port(), args, q), nprocs=2, join=False,
                               start_method="spawn")
    procs.join()
    r = q.get(timeout=5)
    n = args.batch * args.steps
    print(f"[2] 1 rank            : {n / r['one']:8.2f} samples/s")
    print(f"[2] 2 ranks (gloo DDP): {2 * n / r['ddp']:8.2f} samples/s")
    print(f"[2] 2 independent procs (no comm, same cores): {2 * n / r['indep']:8.2f} samples/s")
    print(f"[2] scaling efficiency DDP vs 1 rank = {r['one'] / r['ddp']:.3f}  (goal >= 0.85)")
    print(f"[2] DDP vs independent processes     = {r['indep'] / r['ddp']:.3f}  (communication/sync cost only)")


if __name__ == "__main__":
    main()
