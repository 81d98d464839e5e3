"""Does the dual-stream model learn, and does radar help under clouds? Mean ± std over seeds (synthetic, CPU).

One training run is one draw: on this small benchmark the seed alone moves test mIoU by tens of points.
So each variant (``model.streams``: ``both``, ``s2``, ``s1``) goes through the project's own machinery,
not a loop of its own: one local launch ``python hpc/launch.py --executor local --trials N
--set model.streams=... --set hpc.final={seeds: S}`` with its own study, i.e. a small search, then the best
configuration retrained with S seeds as the final study ``<study>/final``. The table is read from each
study's ``results.json`` ``final`` section (:class:`hpc.results.FinalSection`): the members' test mIoU,
its mean, sample std and bootstrap 95 % interval, the OA, and the ensemble of the members.

The data are the synthetic benchmark generated once (default 12 tiles of 64x64 px: 8 train / 2 val /
2 test, 6 crop classes + background, ``--cloud-fraction`` of the S2 dates cloudy); the member seeds move
the initialisation, patch positions and data order, the tiles stay the same (``--data-seed``).

Usage: ``python bench/quality.py [--trials 1] [--seeds 2] [--epochs 3] [--samples 4] [--out /tmp/dualseg-quality]``
(the defaults fit about 10 minutes on a shared 2-core VM; the README says what they show and what to raise);
``--no-run`` prints the table of an earlier run's results.json files. A run needs an ``--out`` without those
studies (the launcher refuses to rerun a complete study, and would not see changed epochs or sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
NAMES = {"both": "dual-stream (S1 + S2)", "s2": "S2 only", "s1": "S1 only"}
RESULTS = Path("results") / "results.json"


def base_config(args: argparse.Namespace) -> dict[str, Any]:
    """The benchmark's config (data, model, training, search space); the launch sets streams and seeds."""
    return {
        "data": {"root": str(Path(args.out).resolve() / f"data-cloud{args.cloud_fraction}-seed{args.data_seed}"),
                 "patch_size": 32, "samples_per_tile": args.samples, "cache_mb": 512,
                 "synthetic": {"tiles": args.tiles, "size": 64, "classes": 6, "cloud_fraction": args.cloud_fraction,
                               "seed": args.data_seed}},
        "model": {"levels": args.levels, "base_width": args.width, "n_heads": 4, "d_k": 8, "dropout": 0.1},
        "train": {"epochs": args.epochs, "batch_size": 8, "lr": 2e-3, "warmup_epochs": 1, "patience": 6,
                  "device": "cpu", "seed": 0, "log_every": 20},
        "hpc": {"workers": 1, "seed": 0, "objective": "val_loss", "pruner": {"kind": "none"}, "poll_interval": 1.0,
                "search": {"train.lr": {"type": "float", "low": 1e-3, "high": 5e-3, "log": True}}},
    }


def study_name(streams: str) -> str:
    return f"quality-{streams}"


def launch_argv(args: argparse.Namespace, streams: str, config: Path) -> list[str]:
    """The launcher's command line of one variant (its own study, the shared scratch)."""
    return [sys.executable, str(REPO / "hpc" / "launch.py"), "--config", str(config), "--executor", "local",
            "--trials", str(args.trials), "--study", study_name(streams), "--scratch", str(Path(args.out) / "runs"),
            "--set", f"model.streams={streams}", "--set", f"hpc.final={{seeds: {args.seeds}}}"]


def run_variant(args: argparse.Namespace, streams: str, config: Path) -> Path:
    """One local launch; its output goes to ``<out>/<study>.log``. Returns the study's results.json."""
    log = Path(args.out) / f"{study_name(streams)}.log"
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "PYTHONUNBUFFERED": "1"}
    with log.open("w") as f:
        rc = subprocess.run(launch_argv(args, streams, config), cwd=REPO, stdout=f, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env).returncode
    if rc != 0:
        tail = log.read_text().splitlines()[-15:]
        raise SystemExit("\n".join([*tail, f"error: launch of {streams} exited {rc} (log: {log})"]))
    return Path(args.out) / "runs" / study_name(streams) / RESULTS


def _pm(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    std = "-" if s["std"] is None else f"{s['std']:.3f}"
    return f"{s['mean']:.3f} ± {std}"


def row(name: str, results: dict[str, Any]) -> str:
    """One markdown row from a results.json: search trials, final seeds and the final section's spread."""
    final = results.get("final")
    if not final or "error" in final:
        why = final["error"] if final else "no final section (hpc.final off?)"
        raise ValueError(f"{results.get('study')}: final runs not evaluated: {why}")
    metrics = final["summary"]["metrics"]
    miou = metrics["miou"]
    interval = "" if miou is None else f" [{miou['low']:.3f}, {miou['high']:.3f}]"
    seeds = str(final["complete"]) if final["complete"] == final["planned"] else \
        f"{final['complete']} of {final['planned']}"
    ensemble = final["summary"]["ensemble"]
    members = " / ".join(f"{m['test']['miou']:.3f}" for m in final["members"])
    cells = [name, str(results["trials"]["requested"]), seeds, _pm(miou) + interval, _pm(metrics["oa"]),
             "-" if ensemble is None else f"{ensemble['miou']:.3f}", members]
    return "| " + " | ".join(cells) + " |"


def header(results: dict[str, dict[str, Any]]) -> str:
    """What was run, read from the first variant's results.json (its config as launched)."""
    first = next(iter(results.values()))
    cfg = first["config"]
    syn, model, train = cfg["data"]["synthetic"], cfg["model"], cfg["train"]
    return (f"synthetic benchmark: {syn['tiles']} tiles {syn['size']}x{syn['size']} (data seed {syn['seed']}), "
            f"cloud_fraction={syn['cloud_fraction']}; model levels {model['levels']}, width {model['base_width']}; "
            f"{cfg['data']['samples_per_tile']} patches per tile per epoch, up to {train['epochs']} epochs; per "
            f"variant {first['trials']['requested']} search trial(s), then the best configuration retrained with "
            f"{cfg['hpc']['final']['seeds']} seeds (hpc.final); test split")


def table(results: dict[str, dict[str, Any]]) -> str:
    """The markdown table of the variants' results.json (keyed by streams), after the majority-class row."""
    head = ["model", "search trials", "seeds", "test mIoU mean ± std [95 % interval]", "test OA mean ± std",
            "ensemble mIoU", "members' test mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    first = next(iter(results.values()))
    base = first["test"]["majority_baseline"]
    lines.append(f"| majority class | - | - | {base['miou']:.3f} | {base['oa']:.3f} | - | - |")
    lines += [row(NAMES.get(streams, streams), r) for streams, r in results.items()]
    return "\n".join(lines)


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--trials", type=int, default=1, help="search trials per variant")
    p.add_argument("--seeds", type=int, default=2, help="final runs of the best configuration (hpc.final.seeds)")
    p.add_argument("--epochs", type=int, default=3, help="epochs per trial (early stopping on val_loss)")
    p.add_argument("--cloud-fraction", type=float, default=0.6)
    p.add_argument("--tiles", type=int, default=12)
    p.add_argument("--samples", type=int, default=4, help="training patches per tile per epoch")
    p.add_argument("--width", type=int, default=8, help="model.base_width")
    p.add_argument("--levels", type=int, default=2, help="model.levels")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated tiles")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the launches")
    p.add_argument("--streams", default="both,s2,s1")
    p.add_argument("--out", default="/tmp/dualseg-quality")
    p.add_argument("--no-run", action="store_true", help="only print the table of an earlier run's results.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = out / "quality.yaml"
    existing = [d for d in (out / "runs" / study_name(s) for s in args.streams.split(",")) if d.exists()]
    if existing and not args.no_run:
        print(f"error: --out: {existing[0]} exists (an earlier run): --no-run prints its table, or use another --out",
              file=sys.stderr)
        return 2
    if not args.no_run:
        config.write_text(yaml.safe_dump(base_config(args), sort_keys=False))
    results: dict[str, dict[str, Any]] = {}
    t_all = time.perf_counter()
    for streams in args.streams.split(","):
        path = out / "runs" / study_name(streams) / RESULTS
        if not args.no_run:
            t0 = time.perf_counter()
            path = run_variant(args, streams, config)
            print(f"... {streams}: {(time.perf_counter() - t0) / 60:.1f} min, {path}", flush=True)
        if not path.is_file():
            print(f"error: {path}: no results.json (run without --no-run first)", file=sys.stderr)
            return 2
        results[streams] = json.loads(path.read_text())
    minutes = "" if args.no_run else f"; {(time.perf_counter() - t_all) / 60:.1f} min in all"
    try:
        print(f"\n{header(results)}{minutes}\n")
        print(table(results))
    except (KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
