"""tqdm progress on rank 0 only, and only on a terminal (SLURM logs stay free of bar redraws)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_bar(it: Iterable[T], *, enabled: bool, desc: str, total: int | None = None) -> Any:
    """``tqdm(it)`` when ``enabled``, stderr is a TTY and ``DUALSEG_PROGRESS`` is not ``0``; else ``it``."""
    env = os.environ.get("DUALSEG_PROGRESS", "")
    if not enabled or env == "0" or (env != "1" and not sys.stderr.isatty()):
        return it
    return tqdm(it, desc=desc, total=total, leave=False, dynamic_ncols=True)
