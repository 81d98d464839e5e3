"""Command-line options generated from typed dataclass fields: an option is written once, as a field.

A field made with :func:`flag` is also the option ``--<name-with-dashes>``: its type comes from the
annotation (``int``, ``float``, ``str``, a ``Literal`` gives ``choices``, ``X | None`` is optional, ``str | int``
such as SLURM's ``--time`` stays the string the config loader parses), its help text and ``--help`` group
from the field. Parsed values are ``None`` unless given, so the config file's value stands unless the
command line sets one (:func:`hpc.config.parse_hpc` skips ``None``).
"""

from __future__ import annotations

import argparse
import types
from dataclasses import Field, field, fields
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")
_HELP, _GROUP = "help", "group"


def flag(default: T, help: str, group: str) -> T:
    """A dataclass field that is also a command-line option, shown under ``group`` in ``--help``."""
    return field(default=default, metadata={_HELP: help, _GROUP: group})


def flag_fields(cls: type[Any]) -> list[Field[Any]]:
    return [f for f in fields(cls) if _HELP in f.metadata]


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _argtype(name: str, annotation: Any) -> tuple[type, tuple[Any, ...] | None]:
    """(argparse ``type``, ``choices``) of a field annotation; ``TypeError`` for what a flag cannot carry."""
    union = get_origin(annotation) in (Union, types.UnionType)
    kinds = [a for a in get_args(annotation) if a is not type(None)] if union else [annotation]
    if len(kinds) == 1 and get_origin(kinds[0]) is Literal:
        choices = get_args(kinds[0])
        if len({type(c) for c in choices}) == 1 and type(choices[0]) in (str, int):
            return type(choices[0]), choices
    elif len(kinds) == 1 and kinds[0] in (int, float, str):
        return kinds[0], None
    elif set(kinds) == {str, int}:  # e.g. SLURM time "90" or 90: the loader takes the string
        return str, None
    raise TypeError(f"{option_name(name)}: a field typed {annotation} cannot be a command-line option")


def add_flags(parser: argparse.ArgumentParser, cls: type[Any]) -> None:
    """Add an option for every :func:`flag` field of ``cls`` (dest = field name, default ``None``)."""
    hints = get_type_hints(cls)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for f in flag_fields(cls):
        kind, choices = _argtype(f.name, hints[f.name])
        title = f.metadata[_GROUP]
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        groups[title].add_argument(option_name(f.name), dest=f.name, type=kind, choices=choices, default=None,
                                   help=f.metadata[_HELP].replace("%", "%%"))


def flag_values(args: argparse.Namespace, cls: type[Any]) -> dict[str, Any]:
    """Field name -> parsed value (``None``: not given) for every :func:`flag` field of ``cls``."""
    return {f.name: getattr(args, f.name) for f in flag_fields(cls)}
