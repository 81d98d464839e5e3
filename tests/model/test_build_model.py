"""build_model: default size, config validation with errors naming the option."""

from __future__ import annotations

import dataclasses

import pytest

from dualseg.config import ModelConfig, load_config
from dualseg.errors import InputError
from dualseg.model import DualStreamUNet3D, build_model, check_patch_size, count_parameters


def test_default_model_is_in_the_pastis_reference_range():
    model = build_model(ModelConfig(), s1_channels=2, s2_channels=10, num_classes=20)
    assert isinstance(model, DualStreamUNet3D)
    assert 1_000_000 <= count_parameters(model) <= 2_000_000


def test_config_file_values_reach_the_model(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  levels: 2\n  base_width: 8\n  n_heads: 2\n  fusion: sum\n  temporal_kernel: 3\n")
    model = build_model(load_config(path).model, 2, 10, 5)
    assert model.widths == [8, 16] and model.fuse[0].proj is None
    assert model.enc_s1.levels[0].first.conv.conv.kernel_size == (3, 3, 3)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("levels", 0, "model.levels"),
        ("levels", 12, "model.levels"),
        ("base_width", 0, "model.base_width"),
        ("base_width", 30, "model.n_heads"),
        ("dropout", 1.0, "model.dropout"),
        ("dropout", -0.1, "model.dropout"),
        ("n_heads", 0, "model.n_heads"),
        ("d_k", 0, "model.d_k"),
        ("temporal_kernel", 2, "model.temporal_kernel"),
    ],
)
def test_bad_options_raise_input_error_naming_the_option(field, value, needle):
    cfg = dataclasses.replace(ModelConfig(), **{field: value})
    with pytest.raises(InputError) as exc:
        build_model(cfg, 2, 10, 5)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_bad_channel_and_class_counts():
    with pytest.raises(InputError, match="data.s2_bands"):
        build_model(ModelConfig(), 2, 0, 5)
    with pytest.raises(InputError, match="num_classes"):
        build_model(ModelConfig(), 2, 10, 1)
    build_model(dataclasses.replace(ModelConfig(), streams="s1"), 2, 0, 5)  # S2 bands not needed


def test_check_patch_size_names_the_option():
    cfg = ModelConfig(levels=4)
    check_patch_size(cfg, 64)
    for bad in (30, 4):
        with pytest.raises(InputError, match=r"data.patch_size: .* 2\*\*\(model.levels-1\) = 8"):
            check_patch_size(cfg, bad)
