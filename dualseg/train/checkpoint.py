"""What a resume needs beyond the checkpoint file format: RNG states, and the newest loadable state.

The format itself (atomic CRC-checked saves, ``weights_only`` loads, strict weight loading) is
:mod:`dualseg.infer.checkpoint`, shared with inference; its names are re-exported here.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from dualseg.infer.checkpoint import (
    CORRUPT,
    CheckpointError,
    load_checkpoint,
    load_model_state,
    save_checkpoint,
    unwrap,
)

__all__ = [
    "CORRUPT",
    "RESUME_KEYS",
    "CheckpointError",
    "capture_rng",
    "check_resumable",
    "load_checkpoint",
    "load_model_state",
    "load_newest",
    "pick_resume",
    "restore_rng",
    "save_checkpoint",
    "unwrap",
]

log = logging.getLogger(__name__)


RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "train_loss_sum", "early_stopping", "history")


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """A training state (not a bare-weights file): every key a resume reads is present."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"not a dualseg training state (no {missing[0]!r} entry)", path)



def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors/primitives (torch, cuda, numpy global, python ``random``)."""
    np_state = cast(tuple[Any, ...], np.random.get_state())  # legacy tuple form (the stubs allow a dict)
    py_state = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": int(py_state[0]), "state": list(py_state[1]), "gauss": py_state[2]},
    }


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states restored only if the device count matches)."""
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([c.cpu() for c in cuda])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].cpu().numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def _progress(state: dict[str, Any]) -> tuple[int, int]:
    return int(state["epoch"]), int(state["step"])


def load_newest(
    paths: list[Path], map_location: str | torch.device = "cpu"
) -> tuple[Path | None, dict[str, Any] | None, list[str]]:
    """The training state to resume from: ``paths[0]`` if it loads, else the most advanced loadable other.

    Returns ``(path, state, skipped)`` with one ``"<name> (<reason>)"`` per existing file that was
    passed over; ``(None, None, [])`` when none of the files exists (a fresh start). Raises
    :class:`CheckpointError` naming every file when some exist but none loads.
    """
    loaded: list[tuple[Path, dict[str, Any]]] = []
    skipped: list[str] = []
    for i, p in enumerate(paths):
        if not p.is_file():
            if i == 0 and any(q.is_file() for q in paths[1:]):
                skipped.append(f"{p.name} (missing)")
            continue
        try:
            state = load_checkpoint(p, map_location=map_location)
            check_resumable(state, p)
        except CheckpointError as exc:
            skipped.append(f"{p.name} ({exc.reason})")
            continue
        if i == 0:
            return p, state, skipped
        loaded.append((p, state))
    if not loaded:
        if skipped:
            raise CheckpointError(f"no loadable checkpoint ({'; '.join(skipped)})", paths[0].parent)
        return None, None, []
    path, state = max(loaded, key=lambda ps: _progress(ps[1]))  # max keeps the first of equals
    skipped += [f"{p.name} (older)" for p, _ in loaded if p != path]
    return path, state, skipped


def pick_resume(
    run_dir: Path, names: tuple[str, ...], is_main: bool
) -> tuple[Path | None, dict[str, Any] | None]:
    """Rank 0 picks the file to resume from (:func:`load_newest`, one warning naming what it skipped).

    Every rank gets rank 0's answer (a collective), so all load the same file or all raise the same
    :class:`CheckpointError`; ``(None, None)`` means there is nothing to resume (a fresh start). Rank 0
    also gets the state it loaded (on the CPU), so the file is read once there.
    """
    from dualseg.train.distributed import broadcast_object

    choice: tuple[str | None, CheckpointError | None] = (None, None)
    state = None
    if is_main:
        try:
            path, state, skipped = load_newest([run_dir / n for n in names])
            if skipped and path is not None:
                log.warning("checkpoint: skipped %s; resuming from %s", ", ".join(skipped), path)
            choice = (path.name if path is not None else None, None)
        except CheckpointError as exc:
            choice = (None, exc)
    name, error = cast(tuple[str | None, CheckpointError | None], broadcast_object(choice))
    if error is not None:
        raise CheckpointError(error.reason, error.path)
    return (run_dir / name if name is not None else None), state
