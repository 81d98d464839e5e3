"""Checkpoints that a requeued job can trust: atomic writes, ``weights_only`` loads, shape checks.

Everything stored is a tensor, number, string, list or dict (RNG states included, converted from
numpy/python tuples), so ``torch.load(weights_only=True)`` can read it without unpickling code from a
shared scratch directory. A checkpoint from a different architecture fails with the name of the
first mismatching parameter instead of a wall of ``size mismatch`` lines.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from dualseg.errors import InputError, TrainingError
from dualseg.io import atomic_torch_save


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` atomically (a crash leaves the previous file intact)."""
    return atomic_torch_save(state, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``; a missing file is an InputError, a corrupt one a TrainingError."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint: file not found: {p}")
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt/unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise TrainingError(f"checkpoint: cannot load {p}: {first}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise TrainingError(f"checkpoint: {p} is not a dualseg checkpoint (no 'model' entry)")
    return state


def unwrap(model: nn.Module) -> nn.Module:
    """The bare module under DDP / torch.compile wrappers (state dict keys without prefixes)."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load a state dict strictly, naming the first missing/unexpected/mis-shaped parameter."""
    target = unwrap(model)
    own = target.state_dict()
    for name, tensor in state.items():
        if name not in own:
            raise TrainingError(
                f"{source}: parameter {name} is not in this model (checkpoint from another architecture?)"
            )
        if tuple(own[name].shape) != tuple(tensor.shape):
            raise TrainingError(
                f"{source}: parameter {name} has shape {tuple(tensor.shape)} in the checkpoint but "
                f"{tuple(own[name].shape)} in the model (different model config?)"
            )
    missing = [n for n in own if n not in state]
    if missing:
        raise TrainingError(f"{source}: parameter {missing[0]} missing from the checkpoint ({len(missing)} missing)")
    target.load_state_dict(state, strict=True)


def capture_rng() -> dict[str, Any]:
    """All RNG states as tensors/primitives (torch, cuda, numpy global, python ``random``)."""
    np_state = np.random.get_state()
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
