"""CLI: ``python -m dualseg.train --config X.yaml [--set train.lr=1e-3 ...] [--evaluate CKPT]``.

Exit codes: 0 ok, 1 TrainingError (NaN loss, incompatible checkpoint), 2 InputError (bad config,
option, tile, unwritable scratch, an ``--evaluate`` file that is no checkpoint), 130 interrupted by Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from dualseg.config import load_config
from dualseg.errors import InputError, TrainingError

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with a YAML value (``1e-3`` read as a float, unlike plain YAML 1.1)."""
    if "=" not in item:
        raise InputError(f"--set: expected key=value, got {item!r}")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise InputError(f"--set: empty key in {item!r}")
    if _NUMBER.match(raw.strip()) and not re.match(r"^[+-]?\d+$", raw.strip()):
        return key, float(raw)
    try:
        return key, yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        raise InputError(f"--set {key}: value {raw!r} is not valid YAML") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python -m dualseg.train",
        description="Train a dualseg model (resuming from last.pt), or evaluate a checkpoint.",
        epilog="exit codes: 0 ok, 1 training error (NaN loss, incompatible checkpoint), 2 bad input",
    )
    p.add_argument("--config", type=Path, help="YAML config (default: all defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--run-dir", type=Path, help="run directory (default: <scratch>/<train.run_name>)")
    p.add_argument("--no-resume", action="store_true", help="start fresh even if last.pt exists")
    p.add_argument("--evaluate", type=Path, metavar="CKPT", help="evaluate a checkpoint instead of training")
    p.add_argument("--split", default="test", help="split for --evaluate (default: test)")
    p.add_argument("--log-level", default="INFO", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from dualseg.train.log import setup_logging

    setup_logging(args.log_level)
    try:
        overrides = dict(parse_override(s) for s in args.overrides)
        cfg = load_config(args.config, overrides)
        if args.evaluate is not None:
            from dualseg.infer.checkpoint import CheckpointError
            from dualseg.train.evaluate import evaluate_checkpoint

            cfg_eval = cfg if (args.config or overrides) else None
            try:
                results = evaluate_checkpoint(args.evaluate, cfg_eval, split=args.split)
            except CheckpointError as exc:  # the file the user named is bad input, not a training failure
                if exc.path != args.evaluate:
                    raise
                raise InputError(f"--evaluate: cannot load {exc.path}: {exc.reason}") from None
            print(json.dumps(results, indent=2))
            return 0
        from dualseg.train.trainer import fit

        result = fit(cfg, run_dir=args.run_dir, resume=not args.no_resume)
        if os.environ.get("RANK", "0") != "0":  # under torchrun: one summary, from rank 0
            return 0
        print(json.dumps({
            "run_dir": str(result.run_dir), "stopped": result.stopped, "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
            "best_val_miou": result.best_metrics.get("val_miou"), "monitor": result.monitor,
            "best_value": result.best_value,
        }))
        return 0
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    logging.captureWarnings(True)
    sys.exit(main())
