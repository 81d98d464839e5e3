"""The hpc: section: strict keys, validated search space, SLURM time syntax."""

from __future__ import annotations

from pathlib import Path

import pytest

from dualseg.config import Config, load_config
from dualseg.errors import InputError
from hpc.config import HpcConfig, parse_hpc

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_parse() -> None:
    for name in ("default.yaml", "tiny.yaml"):
        hpc = parse_hpc(load_config(REPO / "configs" / name))
        assert hpc.trials >= 1 and hpc.specs


def test_command_line_wins_over_file_and_none_keeps_file() -> None:
    cfg = load_config(REPO / "configs" / "tiny.yaml")
    hpc = parse_hpc(cfg, {"trials": 7, "nodes": None})
    assert hpc.trials == 7 and hpc.nodes == HpcConfig().nodes and hpc.study == "tiny"


@pytest.mark.parametrize(
    "hpc, message",
    [
        ({"trails": 3}, "unknown key hpc.trails"),
        ({"nodes": 0}, "--nodes: must be >= 1"),
        ({"trials": "many"}, "hpc.trials: expected int"),
        ({"pruner": {"kind": "magic"}}, "hpc.pruner.kind"),
        ({"pruner": {"kind": "percentile", "percentile": 120}}, "hpc.pruner.percentile: must be between 0 and 100"),
        ({"pruner": {"kind": "sha", "reduction_factor": 1}}, "hpc.pruner.reduction_factor: must be >= 2"),
        ({"pruner": {"kind": "patient", "patience": -1}}, "hpc.pruner.patience: must be >= 0"),
        ({"executor": "k8s"}, "hpc.executor: must be one of auto, slurm, local"),
        ({"study": "a b"}, "--study"),
        ({"mem": "lots"}, "--mem"),
        ({"time": "1:2:3:4"}, "--time"),
        ({"search": {"train.learning_rate": {"type": "float", "low": 0.1, "high": 1}}}, "train.learning_rate"),
        ({"search": {"train.lr": {"type": "float", "low": 1, "high": 0.1}}}, "low <= high"),
        ({"search": {"model.temporal": {"type": "categorical", "choices": [1, 2]}}}, "model.temporal"),
        ({"search": {"train.lr": {"type": "normal"}}}, "hpc.search.train.lr.type: must be one of"),
        ({"grace_period": 1, "heartbeat_interval": 5}, "grace_period"),
    ],
)
def test_bad_values_name_the_option(hpc: dict, message: str) -> None:
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("(", r"\(")):
        parse_hpc(Config(hpc=hpc))
