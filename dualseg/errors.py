"""Exceptions that carry a one-line, user-facing message.

Entry points catch :class:`InputError` and print ``error: <message>`` with exit code 2,
so every check in the library raises it with a message naming the tile, band or option
at fault instead of letting a traceback from deep inside zarr/numpy/torch escape.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator


class DualsegError(Exception):
    """Base class of all dualseg errors."""


class InputError(DualsegError, ValueError):
    """Bad user input: a config key, a tile, a band, a CLI option. Exit code 2."""


class TrainingError(DualsegError, RuntimeError):
    """Training cannot go on (NaN loss, incompatible checkpoint). Exit code 1."""


def cause_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from, raised while handling, or wraps (a driver error's
    ``orig``), each once: what went wrong is often several wrappers deep (Optuna, SQLAlchemy, our own)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None)
        todo += [e.__cause__, e.__context__, orig if isinstance(orig, BaseException) else None]


def one_line(exc: BaseException) -> str:
    """The user-facing line of ``exc``.

    An error raised in a DataLoader worker comes back with the worker's traceback folded into its
    message; its last line (minus the ``module.Class:`` prefix) is the original message.
    """
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    if not lines:
        return type(exc).__name__
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return lines[-1].removeprefix(prefix)


def report_error(exc: DualsegError, scrub: Callable[[str], str] | None = None) -> int:
    """Print ``error: <one line>`` to stderr; return the exit code (2 bad input, 1 otherwise).

    ``scrub`` removes secrets (the orchestration layer passes its password masker).
    """
    msg = one_line(exc)
    if scrub is not None:
        msg = scrub(msg)
    print(f"error: {msg}", file=sys.stderr)
    return 2 if isinstance(exc, InputError) else 1
