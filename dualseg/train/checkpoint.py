"""Checkpoints that a requeued job can trust: atomic writes, checksums, ``weights_only`` loads, shape checks.

Everything stored is a tensor, number, string, list or dict (RNG states included, converted from
numpy/python tuples), so ``torch.load(weights_only=True)`` can read it without unpickling code from a
shared scratch directory. A checkpoint from a different architecture fails with the name of the
first mismatching parameter instead of a wall of ``size mismatch`` lines.

Damage is detected, not trusted: torch's zip reader checks no CRC, so a file damaged in the middle
would load with wrong weights. :func:`save_checkpoint` therefore puts a CRC-32 of the archive into
the zip comment (still a valid zip that plain ``torch.load`` reads) and :func:`load_checkpoint`
verifies it; truncated, garbage and foreign files all fail with one :class:`CheckpointError` line.
"""

from __future__ import annotations

import io
import logging
import os
import random
import zlib
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from dualseg.errors import InputError, TrainingError
from dualseg.io import _fsync_dir, atomic_write_bytes

log = logging.getLogger(__name__)

_EOCD = b"PK\x05\x06"  # zip end-of-central-directory record: 22 bytes + comment, at the end of the file
_CRC_TAG = b"dualseg-crc32:"


class CheckpointError(TrainingError):
    """A checkpoint file that cannot be trusted (truncated, corrupt, foreign): a resume may fall back.

    The message is one line, ``checkpoint: <reason>: <path>``; ``reason`` alone names it in a list.
    """

    def __init__(self, reason: str, path: Path | str) -> None:
        super().__init__(f"checkpoint: {reason}: {path}")
        self.reason, self.path = reason, Path(path)

    def __reduce__(self) -> tuple[type, tuple[str, Path]]:  # picklable (broadcast to the other ranks)
        return CheckpointError, (self.reason, self.path)


CORRUPT = "not a dualseg checkpoint (truncated or corrupt)"


def _serialize(state: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save(state, buf)
    with buf.getbuffer() as view:  # no copy of a checkpoint that may be gigabytes
        n = len(view)
        if bytes(view[n - 22:n - 18]) != _EOCD or bytes(view[n - 2:]) != b"\x00\x00":
            return buf.getvalue()  # torch writes no comment; should it ever, leave the file as it is
        crc = zlib.crc32(view[:n - 2])
    comment = _CRC_TAG + b"%08x" % crc
    buf.seek(n - 2)
    buf.write(len(comment).to_bytes(2, "little") + comment)
    return buf.getvalue()


def _verify(data: bytes, path: Path) -> None:
    """The archive ends where its end record says, and matches the CRC in its comment (when it has one)."""
    pos = data.rfind(_EOCD, max(0, len(data) - 22 - 0xFFFF))
    if pos < 0:
        raise CheckpointError(CORRUPT, path)
    declared = int.from_bytes(data[pos + 20:pos + 22], "little")
    comment = data[pos + 22:]
    if len(comment) != declared:  # cut (or grown) after the end record
        raise CheckpointError(CORRUPT, path)
    if comment.startswith(_CRC_TAG) and b"%08x" % zlib.crc32(memoryview(data)[:pos + 20]) != comment[len(_CRC_TAG):]:
        raise CheckpointError(CORRUPT, path)


def save_checkpoint(state: dict[str, Any], path: str | Path, previous: str | Path | None = None) -> Path:
    """Write ``state`` atomically and durably; a crash at any point leaves a loadable file behind.

    With ``previous``, the current ``path`` (if any) becomes ``previous`` only once the new file is
    on disk: write ``.<name>.next`` (fsynced), rename ``path`` -> ``previous``, rename the new file
    -> ``path``, fsync the directory. A kill between the renames leaves ``previous`` (and the
    complete ``.next``), which :func:`dualseg.train.trainer.fit` falls back to.
    """
    path = Path(path)
    data = _serialize(state)
    if previous is None or not path.exists():
        return atomic_write_bytes(path, data)
    nxt = atomic_write_bytes(path.with_name(f".{path.name}.next"), data)
    os.replace(path, previous)
    os.replace(nxt, path)
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` after checking the CRC.

    A missing file is an InputError; a truncated, corrupt, unsafe (pickled objects) or foreign
    file a one-line :class:`CheckpointError`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint: file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or type(exc).__name__})", p) from None
    if not data.startswith(b"PK\x03\x04"):  # every torch.save since 1.6 is a zip archive
        raise CheckpointError(CORRUPT, p)
    _verify(data, p)
    try:
        state = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt/unsafe files
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError("holds pickled objects that weights_only loading refuses "
                                  "(not a dualseg checkpoint)", p) from None
        raise CheckpointError(CORRUPT, p) from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(CORRUPT, p)
    return state


RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "step", "train_loss_sum", "early_stopping", "history")


def check_resumable(state: dict[str, Any], path: str | Path) -> None:
    """A training state (not a bare-weights file): every key a resume reads is present."""
    missing = [k for k in RESUME_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"not a dualseg training state (no {missing[0]!r} entry)", path)


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
