"""dualseg.strict: the one strict dict -> dataclass builder, on dataclasses of its own (not the config schema)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import pytest

from dualseg.errors import InputError
from dualseg.strict import from_dict, to_dict


@dataclass
class Inner:
    size: int = 1
    rate: float = 0.5


@dataclass
class Outer:
    name: str = "x"
    flag: bool = False
    kind: Literal["a", "b"] = "a"
    workers: int | Literal["auto"] = "auto"
    inner: Inner | None = None
    items: list[int] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def test_round_trip_and_nested_dataclasses() -> None:
    value = Outer("y", True, "b", 3, Inner(2, 0.25), [1, 2], {"k": [1]})
    assert from_dict(Outer, to_dict(value)) == value
    built = from_dict(Outer, {"inner": {"size": 4}, "items": []})
    assert built.inner == Inner(4, 0.5) and isinstance(built.inner, Inner)


@pytest.mark.parametrize(("data", "message"), [
    ({"nmae": "y"}, "config: unknown key nmae (known: extra, flag, inner, items, kind, name, workers)"),
    ({"inner": {"sise": 1}}, "config: unknown key inner.sise (known: rate, size)"),
    ({"flag": 1}, "config: flag: expected bool, got int 1"),
    ({"inner": {"size": True}}, "config: inner.size: expected int, got bool True"),
    ({"items": [1, "2"]}, "config: items[1]: expected int, got str '2'"),
    ({"items": 3}, "config: items: expected a list, got int 3"),
    ({"kind": "c"}, "config: kind: must be one of a, b (got 'c')"),
    ({"workers": 1.5}, "config: workers: expected int or 'auto', got float 1.5"),
    ({"inner": [1]}, "config: inner: expected a mapping, got list"),
    ({"extra": "k"}, "config: extra: expected a mapping, got str"),
    ({"name": None}, "config: name: expected str, got NoneType None"),
])
def test_every_wrong_value_is_one_line_naming_where(data: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError) as exc:
        from_dict(Outer, data)
    assert str(exc.value) == message


def test_ints_are_floats_but_bools_are_neither() -> None:
    assert from_dict(Inner, {"rate": 1}).rate == 1.0 and isinstance(from_dict(Inner, {"rate": 1}).rate, float)
    with pytest.raises(InputError, match="rate: expected float, got bool"):
        from_dict(Inner, {"rate": False})
    assert from_dict(Outer, {"inner": None}).inner is None  # Optional: null is allowed
    with pytest.raises(InputError, match="top level: expected a mapping, got list"):
        from_dict(Outer, [])  # type: ignore[arg-type]
