"""hpc/options.py: options generated from typed fields; the launcher's parser is HpcConfig's flag fields."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field, fields
from typing import Literal

import pytest

from hpc.config import HpcConfig
from hpc.launch import build_parser
from hpc.options import add_flags, flag, flag_fields, flag_values, option_name


@dataclass
class Toy:
    count: int = flag(3, "how many", "first")
    ratio: float | None = flag(None, "a share, 5% steps", "first")
    mode: Literal["fast", "slow"] = flag("fast", "which way", "second")
    time: str | int = flag("60", "SLURM time", "second")
    label: str | None = flag(None, "a name", "first")
    hidden: list[str] = field(default_factory=list)  # config only: no option


def _parse(cls: type, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_flags(p, cls)
    return p.parse_args(list(argv))


def test_types_choices_and_defaults_come_from_the_fields() -> None:
    a = _parse(Toy, "--count", "4", "--ratio", "0.5", "--mode", "slow", "--time", "1:00:00")
    assert flag_values(a, Toy) == {"count": 4, "ratio": 0.5, "mode": "slow", "time": "1:00:00", "label": None}
    assert flag_values(_parse(Toy), Toy) == dict.fromkeys(("count", "ratio", "mode", "time", "label"))
    assert not hasattr(a, "hidden")
    with pytest.raises(SystemExit):
        _parse(Toy, "--mode", "medium")
    with pytest.raises(SystemExit):
        _parse(Toy, "--count", "three")


def test_help_groups_in_field_order() -> None:
    p = argparse.ArgumentParser()
    add_flags(p, Toy)
    text = p.format_help()
    text = text[text.index("\nfirst:"):]  # past the usage line
    assert text.index("--count") < text.index("--ratio") < text.index("--label") < text.index("\nsecond:") \
        < text.index("--mode {fast,slow}") < text.index("--time")
    assert "a share, 5% steps" in text


def test_a_type_an_option_cannot_carry_is_refused() -> None:
    @dataclass
    class Bad:
        tags: list[str] | None = flag(None, "tags", "g")

    with pytest.raises(TypeError, match="--tags"):
        add_flags(argparse.ArgumentParser(), Bad)


def test_launcher_parser_has_one_option_per_flag_field() -> None:
    """Adding a flag field to HpcConfig is all it takes to get ``--its-name`` with its help."""
    p = build_parser()
    by_dest = {a.dest: a for a in p._actions}
    for f in flag_fields(HpcConfig):
        action = by_dest[f.name]
        assert action.option_strings == [option_name(f.name)] and action.help == f.metadata["help"]
        assert action.default is None
    assert by_dest["executor"].choices == ("auto", "slurm", "local")
    assert by_dest["nodes"].type is int and by_dest["time"].type is str
    explicit = {"help", "config", "set", "dry_run", "no_eval", "prepare_only", "allow_change"}
    assert set(by_dest) == explicit | {f.name for f in flag_fields(HpcConfig)}
    assert {f.name for f in fields(HpcConfig)} >= {f.name for f in flag_fields(HpcConfig)}
