"""Model speed: design choices measured side by side, plus throughput and MFU.

1. Encoder layout: dualseg's frame layout (per-date convs run as Conv2d over B*T frames, fused
   per-frame GroupNorm) vs the textbook channels-first Conv3d with a (1,3,3) kernel and a per-frame
   GroupNorm written with tensor ops. Same maths, same parameters. Goal: ratio >= 1.
2. Packing: skipping padded / cloudy dates in the encoder vs computing them, at ``--invalid``
   fraction of invalid S2 dates. Goal: speed-up close to 1 / (1 - saved fraction of all frames).
3. Throughput of the full model (forward + backward): samples/s, FLOPs per step from
   ``dualseg.model.estimate_flops`` and achieved TFLOP/s; MFU on CUDA given ``--peak-tflops``.

Usage: ``python bench/bench_model.py [--device cpu|cuda] [--batch 4] [--size 32] [--t1 12] [--t2 20]
[--steps 5] [--invalid 0.4] [--amp]``. CPU smoke run: ``--batch 2 --size 32 --steps 2``.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dualseg.config import ModelConfig
from dualseg.model import build_model, count_parameters, estimate_flops
from dualseg.model.encoder import StreamEncoder


def make_batch(args: argparse.Namespace, device: torch.device, invalid: float) -> dict[str, Any]:
    g = torch.Generator().manual_seed(0)
    b, s = args.batch, args.size
    s2_pad = torch.rand(b, args.t2, generator=g) < invalid
    batch = {
        "s1": torch.randn(b, 2, args.t1, s, s, generator=g),
        "s2": torch.randn(b, 10, args.t2, s, s, generator=g),
        "s1_pad": torch.zeros(b, args.t1, dtype=torch.bool),
        "s2_pad": s2_pad,
        "s1_doy": torch.arange(args.t1).repeat(b, 1) * 30,
        "s2_doy": torch.arange(args.t2).repeat(b, 1) * 18,
    }
    return {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, steps: int) -> float:
    """Median seconds per call after one warm-up call."""
    return compare({"x": fn}, device, steps)["x"]


def compare(fns: dict[str, Any], device: torch.device, steps: int) -> dict[str, float]:
    """Median seconds per call of each variant, calls interleaved so machine load hits all alike."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(steps):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


class ChannelsFirstEncoder(nn.Module):
    """Reference: the same encoder on (B, C, T, H, W) with nn.Conv3d (1,3,3) and a hand-written per-frame GroupNorm."""

    def __init__(self, ref: StreamEncoder):
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        self.plan: list[tuple[int, bool]] = []  # (level, residual)
        for li, level in enumerate(ref.levels):
            for bi, block in enumerate([level.first, *level.res]):
                self.convs.append(block.conv.conv)
                self.norms.append(block.norm)
                self.plan.append((li, bi > 0))

    @staticmethod
    def frame_group_norm(x: torch.Tensor, norm: nn.GroupNorm) -> torch.Tensor:
        b, c, t, h, w = x.shape
        g = norm.num_groups
        xg = x.view(b, g, c // g, t, h, w)
        var, mean = torch.var_mean(xg, dim=(2, 4, 5), keepdim=True, unbiased=False)
        y = ((xg - mean) * torch.rsqrt(var + norm.eps)).view(b, c, t, h, w)
        return y * norm.weight.view(1, c, 1, 1, 1) + norm.bias.view(1, c, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats: list[torch.Tensor] = []
        for (level, residual), conv, norm in zip(self.plan, self.convs, self.norms):
            if not residual and level > 0:
                feats.append(x)
            y = F.relu(self.frame_group_norm(conv(x), norm))
            x = x + y if residual else y
        feats.append(x)
        return feats


def bench_layout(args, device, ctx) -> None:
    torch.manual_seed(0)
    enc = StreamEncoder(10, [args.width * 2**i for i in range(3)], kt=1).to(device)
    ref = ChannelsFirstEncoder(enc).to(device)
    x = torch.randn(args.batch, args.t2, 10, args.size, args.size, device=device)
    pad = torch.zeros(args.batch, args.t2, dtype=torch.bool, device=device)
    x_cf = x.transpose(1, 2).contiguous()
    with torch.no_grad(), ctx():
        a, b = enc(x, pad), ref(x_cf)
        err = max((fa.float() - fb.float().transpose(1, 2)).abs().max().item() for fa, fb in zip(a, b))

    def step(fn, inp):
        def run():
            with ctx():
                feats = fn(inp)
            sum(f.float().mean() for f in feats).backward()
        return run

    t = compare({"frame": step(lambda v: enc(v, pad), x), "cf": step(ref, x_cf)}, device, args.steps)
    t_frame, t_cf = t["frame"], t["cf"]
    print(f"[layout]  frame layout {t_frame * 1e3:8.1f} ms | channels-first Conv3d {t_cf * 1e3:8.1f} ms | "
          f"speed-up {t_cf / t_frame:5.2f}x (goal >= 1; max abs diff {err:.1e})")


def train_step(model, batch, ctx):
    def run():
        with ctx():
            out = model(**batch)
        out.float().mean().backward()
    return run


def bench_packing(args, device, ctx) -> None:
    model = make_model(args, device)
    batch = make_batch(args, device, args.invalid)
    frames = args.batch * (args.t1 + args.t2)
    saved = batch["s2_pad"].sum().item() / frames
    def with_packing(pack_below: float):
        run = train_step(model, batch, ctx)

        def fn():
            model.enc_s1.pack_below = model.enc_s2.pack_below = pack_below
            run()
        return fn

    times = compare({"packed": with_packing(0.9), "dense": with_packing(0.0)}, device, args.steps)
    print(f"[packing] {saved:.0%} of all frames invalid: packed {times['packed'] * 1e3:8.1f} ms | dense "
          f"{times['dense'] * 1e3:8.1f} ms | speed-up {times['dense'] / times['packed']:5.2f}x "
          f"(ideal <= {1 / (1 - saved):.2f}x)")


def make_model(args, device) -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(base_width=args.width, dropout=0.1)
    return build_model(cfg, 2, 10, 20).to(device).train()


def bench_throughput(args, device, ctx) -> None:
    model = make_model(args, device)
    batch = make_batch(args, device, args.invalid)
    flops = estimate_flops(model, batch, backward=True)
    t = timed(train_step(model, batch, ctx), device, args.steps)
    tflops = flops / t / 1e12
    line = (f"[model]   {count_parameters(model) / 1e6:.2f} M params | {flops / 1e9:.1f} GFLOP/step | "
            f"{t * 1e3:.1f} ms/step | {args.batch / t:.1f} samples/s | {tflops:.3f} TFLOP/s")
    if device.type == "cuda":
        line += f" | MFU {tflops / args.peak_tflops:.1%} of {args.peak_tflops:g}"
    print(line)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--t1", type=int, default=12)
    p.add_argument("--t2", type=int, default=20)
    p.add_argument("--width", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--invalid", type=float, default=0.4, help="fraction of invalid (cloudy) S2 dates")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="peak dense bf16 TFLOP/s (H100 SXM: 989)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.amp:
        def ctx():
            return torch.autocast(device.type, dtype=torch.bfloat16)
    else:
        ctx = contextlib.nullcontext
    print(f"device={device} batch={args.batch} size={args.size} T1={args.t1} T2={args.t2} width={args.width} "
          f"amp={args.amp}")
    bench_layout(args, device, ctx)
    bench_packing(args, device, ctx)
    bench_throughput(args, device, ctx)


if __name__ == "__main__":
    main()
