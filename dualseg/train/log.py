"""Rank-aware logging: every line says which rank, node, trial and epoch wrote it.

With dozens of ranks writing into the same SLURM log files, a line is only useful if it says
where it came from. The context lives in one module-level dict that a logging filter injects into
each record, so ``set_log_context(trial=3)`` from the HPC layer shows up in every later line.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from typing import Any, TextIO

FORMAT = (
    "%(asctime)s [rank %(ds_rank)s/%(ds_world)s node %(ds_node)s trial %(ds_trial)s "
    "epoch %(ds_epoch)s] %(levelname)s %(name)s: %(message)s"
)

_CONTEXT: dict[str, Any] = {}
_HANDLER_ATTR = "_dualseg_handler"


def _default_context() -> dict[str, Any]:
    rank = os.environ.get("RANK", "0")
    world = os.environ.get("WORLD_SIZE", "1")
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if "GROUP_RANK" in os.environ:  # torchrun
        node: Any = os.environ["GROUP_RANK"]
    elif local_world and local_world.isdigit() and rank.isdigit() and int(local_world) > 0:
        node = int(rank) // int(local_world)  # submitit's TorchDistributedEnvironment export
    else:
        node = socket.gethostname().split(".")[0]
    return {"rank": rank, "world": world, "node": node, "trial": "-", "epoch": "-"}


class _ContextFilter(logging.Filter):
    """Adds the current context as ``ds_*`` attributes (never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = {**_default_context(), **_CONTEXT}
        for key, value in ctx.items():
            setattr(record, f"ds_{key}", "-" if value is None else value)
        return True


def set_log_context(**fields: Any) -> None:
    """Update the context shown in every log line (``rank``, ``world``, ``node``, ``trial``, ``epoch``).

    ``None`` resets a field to its default (``-`` for trial/epoch, the environment for the rest).
    """
    unknown = set(fields) - {"rank", "world", "node", "trial", "epoch"}
    if unknown:
        raise ValueError(f"set_log_context: unknown field(s) {sorted(unknown)}")
    for key, value in fields.items():
        if value is None:
            _CONTEXT.pop(key, None)
        else:
            _CONTEXT[key] = value


def get_log_context() -> dict[str, Any]:
    """The context as it would be printed now."""
    return {**_default_context(), **_CONTEXT}


def setup_logging(level: int | str = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Install one context-aware handler on the root logger (idempotent: replaces a previous one)."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, _HANDLER_ATTR, False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.addFilter(_ContextFilter())
    setattr(handler, _HANDLER_ATTR, True)
    root.addHandler(handler)
    root.setLevel(level)
    return handler
