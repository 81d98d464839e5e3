"""Which pruner pays? The same search with every pruner ``hpc.pruner.kind`` offers and without, side by side.

All searches run through the launcher's local executor (``hpc/launch.py --executor local``) on the
same generated data, with the same sampler seed and trial budget (the sampler is seeded per trial
number, so the unpruned search and every pruned one draw the same parameters for the same trial);
only ``hpc.pruner.kind`` differs, every other pruner setting is ``PrunerConfig``'s default. Printed per
search: epochs trained (all trials) and their ratio to the unpruned search's, best val mIoU over every
epoch of every trial and its gap to the unpruned best, wall time, and the allocation efficiency
measured by the library: the rank-seconds in training and validation steps (the sum of the
``train_time_s`` + ``val_time_s`` of every epoch record in the trials' ``metrics.jsonl``) over the
rank-seconds the workers were allocated (workers x search wall time). The choice, by the rule of
issue 17: of the pruners whose best is within 0.02 of the unpruned best, the one with the fewest epochs.

    python bench/bench_search.py [--trials 12] [--epochs 8] [--seed 0] [--pruners all|median,sha,...] [--workers 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # configs/; dualseg and hpc are the installed package (pip install -e .)
TOLERANCE = 0.02  # a pruned search may end this far below the unpruned best val mIoU (issue 17)


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
        f"data.root={data}", f"train.epochs={a.epochs}", "train.patience=100", f"hpc.seed={a.seed}",
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


def choose(res: dict[str, dict[str, float]]) -> str | None:
    """The rule: fewest epochs among the pruners within TOLERANCE of the unpruned best (None: no pruner is)."""
    best = res["none"]["best_val_miou"]
    fit = [k for k in res if k != "none" and res[k]["best_val_miou"] >= best - TOLERANCE - 1e-9]
    return min(fit, key=lambda k: (res[k]["epochs"], -res[k]["best_val_miou"]), default=None)


def main() -> None:
    from hpc.search import PrunerKind

    offered = [k for k in typing.get_args(PrunerKind) if k != "none"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0, help="hpc.seed of every search")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--pruners", default="all",
                    help=f"comma list of pruners to compare with none, or all ({','.join(offered)})")
    a = ap.parse_args()
    os.environ.setdefault("DUALSEG_PROGRESS", "0")
    kinds = offered if a.pruners == "all" else [k for k in a.pruners.split(",") if k and k != "none"]
    unknown = sorted(set(kinds) - set(offered))
    if unknown:
        print(f"error: --pruners: unknown {', '.join(unknown)} (offered: {', '.join(offered)})", file=sys.stderr)
        raise SystemExit(2)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = root / "data"
        prepare(root, data)  # generate the data first: no search's wall time includes it
        res = {kind: search(root, data, kind, a) for kind in ["none", *kinds]}
    print(json.dumps(res, indent=1))
    n = res["none"]
    print(f"{a.trials} trials x {a.epochs} epochs, hpc.seed={a.seed}, {a.workers} worker(s)")
    print("| pruner | epochs | / none | best val mIoU | - none | wall / none | alloc. eff. |")
    print("|---|---|---|---|---|---|---|")
    for kind in ["none", *kinds]:
        p = res[kind]
        print(f"| {kind} | {p['epochs']:.0f} | {p['epochs'] / n['epochs']:.3f} | {p['best_val_miou']:.3f} "
              f"| {p['best_val_miou'] - n['best_val_miou']:+.3f} | {p['wall_s'] / n['wall_s']:.3f} "
              f"| {p['allocation_efficiency']:.3f} |")
    chosen = choose(res)
    if chosen is None:
        print(f"choice: no pruner ends within {TOLERANCE} of the unpruned best val mIoU")
    else:
        tied = [k for k in kinds if k != chosen and (res[k]["epochs"], res[k]["best_val_miou"])
                == (res[chosen]["epochs"], res[chosen]["best_val_miou"])]
        print(f"choice: {chosen} (fewest epochs, {res[chosen]['epochs'] / n['epochs']:.3f} of unpruned, "
              f"among those within {TOLERANCE} of the unpruned best val mIoU)"
              + (f"; tied with {', '.join(tied)}" if tied else ""))


if __name__ == "__main__":
    main()
