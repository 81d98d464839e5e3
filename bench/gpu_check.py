"""The GPU questions, answered in one run and printed as one table (``bench/gpu_check.sh`` calls this).

1. ``train step``: forward + backward + optimizer step (the trainer's fused AdamW), bf16 autocast, in
   both memory formats: samples/s, achieved TFLOP/s (FLOPs from ``dualseg.model.estimate_flops``) and
   MFU against ``--peak-tflops``; which layout wins.
2. ``ddp``: the same step under DistributedDataParallel on every visible GPU (NCCL; one GPU: a world
   of 1, which measures DDP's bucketing and hooks, not the interconnect) vs without DDP.
3. ``statistics``: the real pass (``compute_partial``: zarr reads, cloud masking, host-to-device
   copies from unpaged host memory, kernels) on numpy and, where it runs, CuPy: MB/s of tile data.
4. ``loader``: the training loader's samples/s on one core (no workers) against the GPU's samples/s,
   on the *same* batches (the step of part 1 trains on the loader's own batches: same bands, S1
   with 3 channels as PASTIS-R, same T and patch): the cores a GPU needs to be fed.
5. ``prepare``: raw batch (stored integers) -> model inputs on the device (``dualseg.data.prepare``),
   samples/s with and without the pinned host copy, its share of a step, cores to feed step + prepare.

Every warm-up (cuDNN plans, CuPy/numba compilation) is separate and capped by ``--warmup-s``.
``--cpu``: small shapes on the CPU (fp32, gloo), a few seconds; CI checks that table.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.multiprocessing as mp

Row = tuple[str, str, float, str, str]  # part, metric, value, unit, note
S1_BANDS = ["VV", "VH", "ratio"]  # PASTIS-R's S1 has three channels; bench_data.make_dataset writes the third


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn: Callable[[], Any], dev: torch.device, steps: int, warmup_s: float) -> float:
    """Seconds per call of ``fn`` over ``steps`` calls, after a warm-up of at most 3 calls / ``warmup_s``."""
    t0 = time.perf_counter()
    for _ in range(3):
        fn()
        _sync(dev)
        if time.perf_counter() - t0 > warmup_s:
            break
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(dev)
    return (time.perf_counter() - t0) / steps


def make_data(root: Path, a: argparse.Namespace) -> Any:
    """Synthetic tiles with a 3-band S1 (as PASTIS-R's), and the training dataset over them."""
    try:  # run as bench/gpu_check.py (bench/ is sys.path[0]) or imported as bench.gpu_check (tests)
        from bench_data import make_dataset  # type: ignore[import-not-found]
    except ImportError:
        from bench.bench_data import make_dataset

    make_dataset(root, a.tiles, size=a.size, s1_dates=a.t1, s2_dates=a.t2, s1_ratio=True)
    return make_data_at(root, a)


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, batch: dict[str, Any], dev: torch.device,
               amp: bool) -> Callable[[], None]:
    from dualseg.infer.batch import forward
    from dualseg.train.steps import weighted_ce_sums

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            logits = forward(model, batch)
        s, w = weighted_ce_sums(logits, batch["labels"], None, 255)
        (s / w.clamp_min(1)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step


def build(a: argparse.Namespace, bundle: Any, dev: torch.device, fmt: str) -> tuple[torch.nn.Module, Any]:
    from dualseg.config import ModelConfig
    from dualseg.model import build_model
    from dualseg.model.layout import set_memory_format
    from dualseg.train.optim import build_optimizer

    torch.manual_seed(0)
    cfg = ModelConfig(levels=a.levels, base_width=a.width, dropout=0.0)
    model = build_model(cfg, bundle.s1_channels, bundle.s2_channels, bundle.num_classes).to(dev)
    set_memory_format(model, fmt)
    return model, build_optimizer(model.parameters(), lr=1e-4, weight_decay=0.0)


def part_train(a: argparse.Namespace, bundle: Any, batch: dict[str, Any], dev: torch.device) -> tuple[list[Row], float]:
    from dualseg.model import estimate_flops

    rows, rates, amp = [], {}, dev.type == "cuda"
    for fmt in ("contiguous", "channels_last"):
        model, opt = build(a, bundle, dev, fmt)
        sec = timed(train_step(model, opt, batch, dev, amp), dev, a.steps, a.warmup_s)
        rates[fmt] = a.batch / sec
        flops = estimate_flops(model, batch)  # forward + backward; the optimizer's FLOPs are negligible
        rows.append(("train step", f"samples/s, {fmt}", rates[fmt], "samples/s",
                     f"batch {a.batch}, {'bf16' if amp else 'fp32'}, fused AdamW={bool(opt.param_groups[0]['fused'])}"))
        rows.append(("train step", f"TFLOP/s, {fmt}", flops / sec / 1e12, "TFLOP/s", f"{flops / 1e9:.1f} GFLOP/step"))
        rows.append(("train step", f"MFU, {fmt}", flops / sec / 1e12 / a.peak_tflops, "fraction",
                     f"of {a.peak_tflops:g} TFLOP/s peak"))
    best = max(rates, key=lambda k: rates[k])
    rows.append(("train step", "channels_last / contiguous", rates["channels_last"] / rates["contiguous"], "x",
                 f"faster: {best} (train.memory_format=auto picks channels_last on CUDA)"))
    return rows, max(rates.values())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ddp_rank(rank: int, world: int, port: int, a: argparse.Namespace, shape: Any, cpu_batch: dict[str, Any],
              out: Any) -> None:
    """One rank: the step without DDP, then under DDP, on the parent's batch (moved to this rank's GPU)."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from dualseg.infer.batch import to_device

    cuda = not a.cpu
    if not cuda:
        torch.set_num_threads(1)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            device_id=dev if cuda else None)  # set_device first, as the trainer does
    try:
        batch, fmt = to_device(cpu_batch, dev), "channels_last" if cuda else "contiguous"
        plain, opt = build(a, shape, dev, fmt)
        t_plain = timed(train_step(plain, opt, batch, dev, cuda), dev, a.steps, a.warmup_s)
        model, opt = build(a, shape, dev, fmt)
        ddp = DistributedDataParallel(model, device_ids=[rank] if cuda else None, gradient_as_bucket_view=True)
        t_ddp = timed(train_step(ddp, opt, batch, dev, cuda), dev, a.steps, a.warmup_s)
        if rank == 0:
            out.put((t_plain, t_ddp))
    finally:
        dist.destroy_process_group()


def part_ddp(a: argparse.Namespace, bundle: Any, cpu_batch: dict[str, Any]) -> list[Row]:
    world = max(1, torch.cuda.device_count()) if not a.cpu else 1
    shape = argparse.Namespace(s1_channels=bundle.s1_channels, s2_channels=bundle.s2_channels,
                               num_classes=bundle.num_classes)
    q = mp.get_context("spawn").Queue()
    mp.start_processes(_ddp_rank, args=(world, _free_port(), a, shape, cpu_batch, q), nprocs=world,
                       start_method="spawn")
    t_plain, t_ddp = q.get(timeout=60)
    what = "NCCL" if not a.cpu else "gloo"
    note = f"world of {world} ({what})" + (": DDP's buckets and hooks only, no interconnect" if world == 1 else "")
    return [("ddp", "step time DDP / without", t_ddp / t_plain, "x", note),
            ("ddp", "all-reduce overhead", (t_ddp - t_plain) / t_plain, "fraction", note)]


def part_stats(a: argparse.Namespace, bundle: Any, dev: torch.device) -> list[Row]:
    from dualseg.data.backend import get_xp, run_stats
    from dualseg.data.stats import compute_partial

    infos = list(bundle.datasets["train"].tiles)
    channels = {"s1": bundle.s1_channels, "s2": bundle.s2_channels}
    mb = sum(4 * i.height * i.width * sum(len(s.bands) * s.t for s in i.streams.values()) for i in infos) / 2**20
    rows: list[Row] = []
    backends = ["numpy"] + (["cupy"] if dev.type == "cuda" else [])
    index = dev.index if dev.type == "cuda" else None
    for name in backends:
        xp = get_xp(name if name == "numpy" else "auto", index)
        if name == "cupy" and xp.__name__ == "numpy":
            rows.append(("statistics", "pass, cupy", math.nan, "MB/s", "CuPy cannot run here (see the warning)"))
            continue

        def one_pass(xp: Any = xp) -> None:  # run_stats frees CuPy's pools after the pass, as in training
            run_stats(xp, lambda m: compute_partial(infos, bundle.num_classes, channels, m), index)
            if xp.__name__ != "numpy":
                xp.cuda.runtime.deviceSynchronize()

        sec = timed(one_pass, torch.device("cpu"), max(1, a.steps // 5), a.warmup_s)
        rows.append(("statistics", f"pass, {name}", mb / sec, "MB/s",
                     f"{len(infos)} tiles, {mb:.2f} MB, zarr reads + host copies included"))
    return rows


def part_loader(bundle: Any, a: argparse.Namespace, gpu_rate: float) -> tuple[list[Row], float]:
    from dualseg.train.loaders import train_loader

    ds = bundle.datasets["train"]
    loader, sampler, _ = train_loader(ds, bundle.collate_fn, batch_size=a.batch, rank=0, world_size=1, seed=0,
                                      num_workers=0, pin_memory=False, max_t=None)
    n, t0 = 0, time.perf_counter()
    for e in range(2):
        ds.set_epoch(e)
        sampler.set_epoch(e)
        for b in loader:
            n += b["labels"].shape[0]
    per_core = n / (time.perf_counter() - t0)
    shape = f"S1 {bundle.s1_channels} ch, S2 {bundle.s2_channels} ch, patch {a.patch}"
    return [("loader", "samples/s per core", per_core, "samples/s", f"1 process, no workers; {shape}"),
            ("loader", "step samples/s, same batches", gpu_rate, "samples/s", "the train step's best layout"),
            ("loader", "cores to feed one device", gpu_rate / per_core, "cores",
             "set hpc.cpus_per_task >= this + 1 (data.num_workers = cores)")], per_core


def part_prepare(a: argparse.Namespace, cpu_batch: dict[str, Any], dev: torch.device, gpu_rate: float,
                 per_core: float) -> list[Row]:
    from dualseg.data.prepare import prepare, raw_keys
    from dualseg.infer.batch import to_device

    host = {k: v.pin_memory() if dev.type == "cuda" else v for k, v in cpu_batch.items()}
    moved = {k: host[k].to(dev) for k in ("labels", *raw_keys("s1"), *raw_keys("s2")) if k in host}
    moved["aug"] = host["aug"]  # the training batch's augmentation, read on the host as to_device leaves it
    rate = a.batch / timed(lambda: prepare(moved), dev, a.steps, a.warmup_s)
    rate_copy = a.batch / timed(lambda: to_device(host, dev), dev, a.steps, a.warmup_s)
    both = 1.0 / (1.0 / gpu_rate + 1.0 / rate_copy)  # step and prepare run one after the other
    dtypes = f"S1 {cpu_batch['s1'].dtype}, S2 {cpu_batch['s2'].dtype}".replace("torch.", "")
    host_kind = "pinned" if dev.type == "cuda" else "CPU"
    return [("prepare", "samples/s, on the device", rate, "samples/s", f"batch {a.batch}; raw {dtypes}; augmented"),
            ("prepare", "samples/s, with host copy", rate_copy, "samples/s", f"{host_kind} host batch, to_device"),
            ("prepare", "share of step + prepare", both / rate_copy, "fraction", "of a step's time spent preparing"),
            ("prepare", "cores to feed one device, step + prepare", both / per_core, "cores",
             "loader samples/s per core vs the device's samples/s with prepare")]


def make_data_at(root: Path, a: argparse.Namespace) -> Any:
    """The training dataset over the tiles under ``root`` (band statistics computed, not cached)."""
    from dualseg.config import DataConfig
    from dualseg.data import build_data

    cfg = DataConfig(root=str(root), patch_size=a.patch, samples_per_tile=a.samples, s1_bands=S1_BANDS,
                     stats_cache="off", buffer_mb=0, cache_mb=1e6)
    return build_data(cfg, splits=("train",))


def first_batch(bundle: Any, a: argparse.Namespace) -> dict[str, Any]:
    """One collated training batch (on the CPU), as the loader yields it."""
    ds = bundle.datasets["train"]
    return dict(bundle.collate_fn([ds[i] for i in range(a.batch)]))


def run(a: argparse.Namespace) -> list[Row]:
    """Every part; returns the table's rows (also the CI test's entry point)."""
    from dualseg.infer.batch import to_device

    dev = torch.device("cpu") if a.cpu or not torch.cuda.is_available() else torch.device("cuda", 0)
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        root = Path(tmp)
        bundle = make_data(root, a)
        cpu_batch = first_batch(bundle, a)
        rows, gpu_rate = part_train(a, bundle, to_device(cpu_batch, dev), dev)
        rows += part_ddp(a, bundle, cpu_batch)
        rows += part_stats(a, bundle, dev)
        loader_rows, per_core = part_loader(bundle, a, gpu_rate)
        rows += loader_rows + part_prepare(a, cpu_batch, dev, gpu_rate, per_core)
    return rows


def table(rows: list[Row]) -> str:
    lines = ["| part | metric | value | unit | note |", "|---|---|---:|---|---|"]
    lines += [f"| {p} | {m} | {v:.4g} | {u} | {n} |" for p, m, v, u, n in rows]
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cpu", action="store_true", help="small shapes on the CPU (CI), a few seconds")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="MFU denominator (dense bf16 of an H100/H200)")
    p.add_argument("--warmup-s", type=float, default=20.0, help="cap of each part's warm-up")
    for name, gpu in (("batch", 8), ("patch", 64), ("size", 128), ("tiles", 4), ("samples", 8), ("t1", 70),
                      ("t2", 40), ("steps", 20), ("width", 32), ("levels", 3)):
        p.add_argument(f"--{name}", type=int, default=gpu)
    return p


def args_for(argv: list[str] | None = None) -> argparse.Namespace:
    a = parser().parse_args(argv)
    if a.cpu:  # small unless given: the CI budget
        given = set(argv or [])
        for k, v in dict(batch=2, patch=16, size=32, tiles=2, samples=2, t1=4, t2=5, steps=2, width=8).items():
            if f"--{k}" not in given:
                setattr(a, k, v)
    return a


def main(argv: list[str] | None = None) -> int:
    a = args_for(argv)
    if a.cpu:
        torch.set_num_threads(1)
    print(table(run(a)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
