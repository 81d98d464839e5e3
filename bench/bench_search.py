"""Does pruning pay? The same search with the configured pruner and without, side by side.

Both searches run through the launcher's local executor (``hpc/launch.py --executor local``) on the
same generated data, with the same sampler seed and trial budget; only ``hpc.pruner.kind``
differs. Printed per search: epochs trained (all trials), best val mIoU over every epoch of every
trial, wall time, and the allocation efficiency measured by the library: the rank-seconds in
training and validation steps (the sum of the ``train_time_s`` + ``val_time_s`` of every epoch
record in the trials' ``metrics.jsonl``) over the rank-seconds the workers were allocated
(workers x search wall time). Goal: the pruned search reaches the unpruned best val mIoU within
0.02 with <= 40 % of its epochs.

    python bench/bench_search.py [--trials 12] [--epochs 8] [--pruners median,sha] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # configs/; dualseg and hpc are the installed package (pip install -e .)


SETS = ["data.synthetic.tiles=12", "data.synthetic.size=64", "data.samples_per_tile=8", "data.patch_size=32"]


def prepare(root: Path, data: Path) -> None:
    from hpc.launch import main as launch

    argv = ["--config", str(REPO / "configs" / "tiny.yaml"), "--executor", "local", "--prepare-only",
            "--scratch", str(root / "prepare"), "--set", f"data.root={data}"]
    for s in SETS:
        argv += ["--set", s]
    if launch(argv) != 0:
        raise SystemExit("generating the benchmark data failed")


def search(root: Path, data: Path, pruner: str, a: argparse.Namespace) -> dict[str, float]:
    from dualseg.train.rundir import read_metrics, step_seconds
    from hpc.launch import main as launch

    scratch = root / f"runs-{pruner}"
    sets = [
        f"data.root={data}", f"train.epochs={a.epochs}", "train.patience=100", "hpc.seed=0",
        f"hpc.pruner.kind={pruner}", *SETS,
    ]
    argv = ["--config", str(REPO / "configs" / "tiny.yaml"), "--executor", "local", "--no-eval",
            "--trials", str(a.trials), "--workers", str(a.workers), "--scratch", str(scratch),
            "--study", f"bench-{pruner}", "--time", "60"]
    for s in sets:
        argv += ["--set", s]
    t0 = time.monotonic()
    rc = launch(argv)
    wall = time.monotonic() - t0
    if rc != 0:
        raise SystemExit(f"search with pruner {pruner} failed (exit {rc})")
    trials = sorted((scratch / f"bench-{pruner}").glob("trial-*"))
    records = [r for d in trials for r in read_metrics(d)]
    busy = sum(step_seconds(d) for d in trials)  # 1 rank per trial here
    return {
        "trials": len({p.name for p in (scratch / f"bench-{pruner}").glob("trial-*")}),
        "epochs": len(records),
        "best_val_miou": max(float(r["val_miou"]) for r in records),
        "wall_s": wall,
        "allocation_efficiency": busy / (a.workers * wall),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pruners", default="median",
                    help="comma list of pruners to compare with none (median = the configured default, sha, hyperband)")
    a = ap.parse_args()
    os.environ.setdefault("DUALSEG_PROGRESS", "0")
    kinds = [k for k in a.pruners.split(",") if k and k != "none"]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        prepare(root, data)  # generate the data first: no search's wall time includes it
        res = {kind: search(root, data, kind, a) for kind in ["none", *kinds]}
    print(json.dumps(res, indent=1))
    n = res["none"]
    rows = [("allocation efficiency, no pruning", n["allocation_efficiency"], "")]
    for kind in kinds:
        p = res[kind]
        rows += [
            (f"epochs trained, pruner={kind} / none ({p['epochs']:.0f} / {n['epochs']:.0f})",
             p["epochs"] / n["epochs"], "x (goal <= 0.4)"),
            (f"best val mIoU, {kind} - none ({p['best_val_miou']:.3f} - {n['best_val_miou']:.3f})",
             p["best_val_miou"] - n["best_val_miou"], "(goal >= -0.02)"),
            (f"wall time, {kind} / none", p["wall_s"] / n["wall_s"], "x"),
            (f"allocation efficiency, {kind}", p["allocation_efficiency"], ""),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measurement':<{width}} {'value':>8}")
    for name, value, unit in rows:
        print(f"{name:<{width}} {value:>8.3f}  {unit}")


if __name__ == "__main__":
    main()
