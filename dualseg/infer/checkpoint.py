"""Checkpoint files a requeued job (and a map) can trust: atomic, checksummed, ``weights_only``, shape-checked.

Everything stored is a tensor, number, string, list or dict (RNG states included, converted from
numpy/python tuples), so ``torch.load(weights_only=True)`` can read it without unpickling code from a
shared scratch directory. A checkpoint from a different architecture fails with the name of the
first mismatching parameter instead of a wall of ``size mismatch`` lines.

Damage is detected, not trusted: torch's zip reader checks no CRC, so a file damaged in the middle
would load with wrong weights. :func:`save_checkpoint` therefore puts a CRC-32 of the archive into
the zip comment (still a valid zip that plain ``torch.load`` reads) and :func:`load_checkpoint`
verifies it; truncated, garbage and foreign files all fail with one :class:`CheckpointError` line.

The file format (both directions) and the strict weight loading live here, below training, because
inference reads the same files (:func:`dualseg.infer.load_exported` of a ``best.pt``); what only a
resume needs (RNG states, picking the newest loadable file) is :mod:`dualseg.train.checkpoint`.
"""

from __future__ import annotations

import io
import os
import zlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dualseg.errors import InputError, TrainingError
from dualseg.io import _fsync_dir, atomic_write_bytes

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
    complete ``.next``), which a resume falls back to.
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


def read_verified(p: Path, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(weights_only=True)`` of a whole archive whose CRC (when it has one) matches.

    Slim model files carry no CRC but are still checked for truncation. Raises a one-line
    :class:`CheckpointError` for a truncated, corrupt, unsafe (pickled objects) or unreadable file.
    """
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read ({exc.strerror or type(exc).__name__})", p) from None
    if not data.startswith(b"PK\x03\x04"):  # every torch.save since 1.6 is a zip archive
        raise CheckpointError(CORRUPT, p)
    _verify(data, p)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for corrupt/unsafe files
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError("holds pickled objects that weights_only loading refuses "
                                  "(not a dualseg checkpoint)", p) from None
        raise CheckpointError(CORRUPT, p) from None


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True`` after checking the CRC.

    A missing file is an InputError; a truncated, corrupt, unsafe (pickled objects) or foreign
    file a one-line :class:`CheckpointError`.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint: file not found: {p}")
    state = read_verified(p, map_location)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise CheckpointError(CORRUPT, p)
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
