"""The one strict dict -> dataclass builder: every config section, and every typed record the HPC layer
keeps as JSON (study records, final plans), is built here.

Unknown keys and wrong types are one ``config: <where>: ...`` error line naming the key, so a typo such as
``train.learning_rate`` fails loudly instead of silently using a default; ``Literal`` fields name their
choices. Kept apart from the schema (:mod:`dualseg.config`): this is the machinery, that is what is checked.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar

from dualseg.errors import InputError

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _accepted(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(c) for c in typing.get_args(tp))
    return _type_name(tp)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against annotation ``tp``; build nested dataclasses."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise InputError(f"config: {where}: must not be null")
        errors = []
        alternatives = [arg for arg in args if arg is not type(None)]
        for arg in alternatives:
            try:
                return _coerce(value, arg, where)
            except InputError as exc:
                errors.append(str(exc))
        if len(alternatives) > 1:  # e.g. int | Literal["auto"]: name every accepted form
            accepted = " or ".join(_accepted(arg) for arg in alternatives)
            raise InputError(f"config: {where}: expected {accepted}, got {type(value).__name__} {value!r}")
        raise InputError(errors[0] if errors else f"config: {where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise InputError(f"config: {where}: expected a mapping, got {type(value).__name__}")
        return from_dict(typing.cast(type, tp), value, where)
    if origin is list:
        (item_tp,) = typing.get_args(tp) or (Any,)
        if not isinstance(value, list):
            raise InputError(f"config: {where}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise InputError(f"config: {where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if origin is Literal:
        choices = typing.get_args(tp)
        if isinstance(value, bool) or value not in choices:
            raise InputError(f"config: {where}: must be one of {', '.join(map(str, choices))} (got {value!r})")
        return value
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise InputError(f"config: {where}: expected bool, got {type(value).__name__} {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"config: {where}: expected int, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InputError(f"config: {where}: expected float, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise InputError(f"config: {where}: expected str, got {type(value).__name__} {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {_type_name(tp)} at {where}")


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types."""
    if not isinstance(data, dict):
        raise InputError(f"config: {where or 'top level'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise InputError(
            f"config: unknown key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """Plain-dict form of a config (for checkpoints, results and YAML dumps)."""
    return dataclasses.asdict(obj)
