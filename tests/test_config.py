"""Strict typed config: unknown keys and wrong types fail with a message naming the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dualseg.config import Config, apply_overrides, from_dict, load_config, to_dict
from dualseg.errors import InputError


def test_defaults_round_trip() -> None:
    cfg = load_config(None)
    assert from_dict(Config, to_dict(cfg)) == cfg


def test_unknown_key_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(InputError, match=r"unknown key train\.learning_rate"):
        load_config(p)


def test_wrong_type_is_named(tmp_path: Path) -> None:
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epochs: ten\n")
    with pytest.raises(InputError, match=r"train\.epochs: expected int"):
        load_config(p)


def test_bool_is_not_an_int() -> None:
    with pytest.raises(InputError, match=r"train\.epochs"):
        from_dict(Config, {"train": {"epochs": True}})


def test_int_accepted_for_float_and_nested_optional() -> None:
    cfg = from_dict(Config, {"train": {"lr": 1}, "data": {"synthetic": {"tiles": 3}}})
    assert isinstance(cfg.train.lr, float) and cfg.train.lr == 1.0
    assert cfg.data.synthetic is not None and cfg.data.synthetic.tiles == 3


def test_list_items_are_checked() -> None:
    with pytest.raises(InputError, match=r"data\.s1_bands\[1\]"):
        from_dict(Config, {"data": {"s1_bands": ["VV", 3]}})


def test_overrides_are_type_checked() -> None:
    cfg = apply_overrides(load_config(None), {"model.levels": 2, "train.lr": 0.01})
    assert cfg.model.levels == 2 and cfg.train.lr == 0.01
    with pytest.raises(InputError, match="unknown key model.depth"):
        apply_overrides(cfg, {"model.depth": 2})
    with pytest.raises(InputError, match=r"model\.levels: expected int"):
        apply_overrides(cfg, {"model.levels": "2"})


def test_missing_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(bad)


@pytest.mark.parametrize(("text", "message"), [
    ("", r" is empty \(leave out --config for all defaults\)$"),
    ("# to do\n", r" is empty"),
    ("- data\n", r": top level must be a mapping of sections, got list$"),
    ("42\n", r": top level must be a mapping of sections, got int$"),
])
def test_a_file_that_holds_no_mapping_never_means_the_defaults(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(text)
    with pytest.raises(InputError, match=rf"^config: {re.escape(str(f))}{message}"):
        load_config(f)


@pytest.mark.parametrize(
    "key,value,choices",
    [
        ("model.temporal", "lstm", "ltae, mean"),
        ("model.fusion", "foo", "concat, sum, early"),
        ("model.streams", "s3", "both, s1, s2"),
        ("data.class_weighting", "log", "inverse, median, none"),
        ("data.stats_backend", "torch", "auto, numpy, cupy"),
        ("data.date_encoding", "weeks", "doy, days"),
        ("data.stats_cache", "yes", "read, rebuild, off"),
        ("data.stats_cache", True, "read, rebuild, off"),
    ],
)
def test_choices_are_checked_once_by_the_loader(key: str, value: object, choices: str) -> None:
    """Literal options name their choices; the modules below never see a value outside them."""
    with pytest.raises(InputError) as exc:
        apply_overrides(Config(), {key: value})
    assert str(exc.value) == f"config: {key}: must be one of {choices} (got {value!r})"
    section, leaf = key.split(".")
    last = choices.split(", ")[-1]
    assert getattr(getattr(apply_overrides(Config(), {key: last}), section), leaf) == last


@pytest.mark.parametrize("value, error", [
    ("auto", None), (0, None), (6, None),
    ("all", r"^config: data\.num_workers: expected int or 'auto', got str 'all'$"),
    (True, r"^config: data\.num_workers: expected int or 'auto', got bool True$"),
    (-1, r"^config: data\.num_workers: must be >= 0 \(got -1\)$"),
])
def test_num_workers_is_a_count_or_auto(value, error) -> None:
    """data.num_workers defaults to "auto" (resolved in the rank, dualseg.data.build.loader_workers); a bad
    value is named once, when the config is loaded."""
    assert load_config(None).data.num_workers == "auto"
    if error is None:
        assert load_config(None, {"data.num_workers": value}).data.num_workers == value
    else:
        with pytest.raises(InputError, match=error):
            load_config(None, {"data.num_workers": value})
