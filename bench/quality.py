"""Does the dual-stream model learn, and does radar help under clouds? (synthetic benchmark, CPU).

Generates the synthetic benchmark (default 12 tiles of 64x64 px, 6 crop classes + background,
``--cloud-fraction`` of the S2 dates cloudy) once, trains ``streams=both``, ``s2`` and ``s1`` with the
same budget, evaluates each ``best.pt`` on the held-out test tiles and prints a table next to the
majority-class baseline. Documented budget: about 2-4 CPU minutes per model with 2 threads at the
defaults (see docs/training.md for measured numbers).

Usage: ``python bench/quality.py [--epochs 20] [--cloud-fraction 0.6] [--out /tmp/dualseg-quality]``.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from dualseg.config import Config, from_dict
from dualseg.train import evaluate_checkpoint, fit, setup_logging


def config(args: argparse.Namespace, streams: str) -> Config:
    return from_dict(Config, {
        "data": {"root": str(Path(args.out) / f"data-cloud{args.cloud_fraction}"), "patch_size": 32,
                 "samples_per_tile": args.samples, "cache_mb": 512,
                 "synthetic": {"tiles": args.tiles, "size": 64, "classes": 6, "cloud_fraction": args.cloud_fraction,
                               "seed": args.seed}},
        "model": {"levels": 3, "base_width": args.width, "n_heads": 4, "d_k": 8, "dropout": 0.1,
                  "streams": streams},
        "train": {"epochs": args.epochs, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1, "patience": 6,
                  "scratch": str(Path(args.out) / "runs"), "run_name": f"{streams}-cloud{args.cloud_fraction}",
                  "device": "cpu", "seed": args.seed, "log_every": 20},
    })


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--cloud-fraction", type=float, default=0.6)
    p.add_argument("--tiles", type=int, default=12)
    p.add_argument("--samples", type=int, default=16, help="training patches per tile per epoch")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--streams", default="both,s2,s1")
    p.add_argument("--out", default="/tmp/dualseg-quality")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    setup_logging(logging.WARNING)

    rows = []
    for streams in args.streams.split(","):
        cfg = config(args, streams)
        t0 = time.perf_counter()
        res = fit(cfg, resume=False)
        minutes = (time.perf_counter() - t0) / 60
        test = evaluate_checkpoint(res.run_dir / "best.pt", split="test")
        rows.append((streams, res.best_epoch, res.epochs_run, minutes, test))
        print(f"... {streams}: test mIoU {test['miou']:.3f} OA {test['oa']:.3f} ({minutes:.1f} min)", flush=True)

    base = rows[0][4]["majority_baseline"]
    print(f"\nsynthetic benchmark: {args.tiles} tiles 64x64, cloud_fraction={args.cloud_fraction}, "
          f"{args.epochs} epochs max, {args.threads} CPU threads, seed {args.seed}; test split")
    print(f"{'model':<22}{'test mIoU':>10}{'test OA':>9}{'best ep':>8}{'epochs':>7}{'minutes':>8}")
    print(f"{'majority class':<22}{base['miou']:>10.3f}{base['oa']:>9.3f}{'-':>8}{'-':>7}{'-':>8}")
    for streams, best, run, minutes, t in rows:
        name = {"both": "dual-stream (S1+S2)", "s2": "S2 only", "s1": "S1 only"}.get(streams, streams)
        print(f"{name:<22}{t['miou']:>10.3f}{t['oa']:>9.3f}{best:>8d}{run:>7d}{minutes:>8.1f}")


if __name__ == "__main__":
    main()
