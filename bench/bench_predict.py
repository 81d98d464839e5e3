"""Map-making speed: the whole predict pipeline vs the bare model forward on the same windows.

One run, side by side, on one tile written to disk (synthetic, ``--size`` pixels, PASTIS-like dates):

- ``pipeline``: ``dualseg.predict.predict_tiles`` end to end (zarr read, normalisation, per-window
  masks, collate, forward, blending, softmax, zarr write), timed over ``--repeats`` runs;
- ``bare``: only ``model(...)`` on the identical pre-collated batches (the floor).

Reports windows/s of both and their ratio (goal: >= 0.8, i.e. the pipeline adds at most a quarter on
top of the network), plus the cost of overlap (windows per tile for 0 / 0.25 / 0.5).

Usage: ``python bench/bench_predict.py [--config configs/pastis.yaml] [--size 128] [--overlap 0.25]
[--device cpu|cuda] [--repeats 3]``. The model has random weights: speed does not depend on them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from dualseg.config import load_config
from dualseg.data.batch import collate
from dualseg.data.tile import Stream, Tile, open_tile
from dualseg.data.write import write_tile
from dualseg.infer import ModelFile, autocast_ctx, forward, load_input, spec_of, to_device, windows
from dualseg.infer.window import _item
from dualseg.model import build_model
from dualseg.predict import predict_tiles


def make_tile(cfg, size: int, t1: int, t2: int) -> Tile:  # type: ignore[no-untyped-def]  # bench helper
    rng = np.random.default_rng(0)
    d1 = np.sort(rng.choice(np.arange(18600, 18965), t1, replace=False)).astype(np.int32)
    d2 = np.sort(rng.choice(np.arange(18600, 18965), t2, replace=False)).astype(np.int32)
    s1 = {b: rng.normal(-12, 3, (t1, size, size)).astype(np.float32) for b in cfg.data.s1_bands}
    s2 = {b: rng.uniform(100, 3000, (t2, size, size)).astype(np.float32) for b in cfg.data.s2_bands}
    return Tile(Stream(s1, d1), Stream(s2, d2, rng.random((t2, size, size)) < 0.2),
                np.zeros((size, size), np.int16), ["c"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="configs/pastis.yaml")
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--t1", type=int, default=35)
    p.add_argument("--t2", type=int, default=40)
    p.add_argument("--classes", type=int, default=20)
    p.add_argument("--overlap", type=float, default=0.25)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args()
    torch.manual_seed(0)
    cfg = load_config(a.config)
    dev = torch.device(a.device)
    net = build_model(cfg.model, len(cfg.data.s1_bands), len(cfg.data.s2_bands), a.classes)
    k = {"s1": len(cfg.data.s1_bands), "s2": len(cfg.data.s2_bands)}
    model = ModelFile(weights=net.state_dict(), model=cfg.model, s1_bands=cfg.data.s1_bands, s2_bands=cfg.data.s2_bands,
                      mean={s: np.full(k[s], 1000.0 if s == "s2" else -12.0) for s in k},
                      std={s: np.full(k[s], 500.0 if s == "s2" else 3.0) for s in k},
                      class_names=[f"c{i}" for i in range(a.classes)], ignore_index=255,
                      date_encoding=cfg.data.date_encoding, patch_size=cfg.data.patch_size, max_t=cfg.data.max_t,
                      amp=dev.type == "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "tiles"
        write_tile(root / "t.zarr", make_tile(cfg, a.size, a.t1, a.t2))
        corners = windows(a.size, a.size, model.patch_size, a.overlap)
        # bare: the same batches, collated once, forward only
        spec, bare_net = spec_of(model), model.build(dev)
        inp = load_input(open_tile(root / "t.zarr"), spec)
        p_ = model.patch_size
        batches = [to_device(collate([_item(inp, y, x, p_) for y, x in corners[i : i + a.batch]], spec.max_t), dev)
                   for i in range(0, len(corners), a.batch)]

        def bare() -> None:
            with torch.no_grad(), autocast_ctx(dev, model.amp):
                for b in batches:
                    forward(bare_net, b)
            if dev.type == "cuda":
                torch.cuda.synchronize()

        def pipeline(i: int) -> None:
            predict_tiles(model, root, ["t"], Path(tmp) / f"maps{i}", overlap=a.overlap, batch_size=a.batch,
                          device=a.device, progress=False)

        bare()
        pipeline(-1)  # warm-up both
        tb, tp = [], []
        for i in range(a.repeats):  # interleaved: load changes hit both alike
            t0 = time.perf_counter()
            bare()
            tb.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pipeline(i)
            tp.append(time.perf_counter() - t0)
    n = len(corners)
    b, q = n / min(tb), n / min(tp)
    print(f"{a.config}: {a.size}x{a.size} tile, T={a.t1}/{a.t2}, patch {p_}, overlap {a.overlap}: {n} windows")
    print(f"bare forward {b:.2f} windows/s, pipeline {q:.2f} windows/s, ratio {q / b:.3f} (goal >= 0.8)")
    for ov in (0.0, 0.25, 0.5):
        print(f"overlap {ov}: {len(windows(a.size, a.size, p_, ov))} windows per {a.size}x{a.size} tile")


if __name__ == "__main__":
    main()
