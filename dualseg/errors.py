"""Exceptions that carry a one-line, user-facing message.

Entry points catch :class:`InputError` and print ``error: <message>`` with exit code 2,
so every check in the library raises it with a message naming the tile, band or option
at fault instead of letting a traceback from deep inside zarr/numpy/torch escape.
"""

from __future__ import annotations


class DualsegError(Exception):
    """Base class of all dualseg errors."""


class InputError(DualsegError, ValueError):
    """Bad user input: a config key, a tile, a band, a CLI option. Exit code 2."""


class TrainingError(DualsegError, RuntimeError):
    """Training cannot go on (NaN loss, incompatible checkpoint). Exit code 1."""
