"""hpc.search: per-trial sampler seeds, suggest on a retry, pruners, search-space checks."""

from __future__ import annotations

import optuna
import pytest

from dualseg.config import Config
from dualseg.errors import InputError
from hpc.config import parse_hpc
from hpc.search import ParamSpec, PrunerConfig, build_pruner, build_sampler, check_param, suggest, trial_seed

SPACE = {"train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
         "model.temporal": {"type": "categorical", "choices": ["ltae", "mean"]},
         "model.levels": {"type": "int", "low": 2, "high": 4}}


def _draws(seed: int | None, n: int) -> list[dict]:
    hpc = parse_hpc(Config(hpc={"seed": seed, "search": SPACE, "trials": n}))
    study = optuna.create_study()
    out = []
    for number in range(n):
        study.sampler = build_sampler(hpc, number)
        trial = study.ask()
        out.append(suggest(trial, hpc.specs))
        study.tell(trial, float(number))
    return out


def test_per_trial_seeds_reproduce_and_differ() -> None:
    assert _draws(3, 5) == _draws(3, 5)
    assert _draws(3, 5) != _draws(4, 5)
    assert len({d["train.lr"] for d in _draws(3, 5)}) == 5
    assert trial_seed(None, 3) is None and trial_seed(1, 2) != trial_seed(1, 3) != trial_seed(2, 2)


def test_tpe_keeps_concurrent_samples_apart() -> None:
    hpc = parse_hpc(Config(hpc={"seed": 0, "search": SPACE}))
    sampler = build_sampler(hpc, 0)
    assert isinstance(sampler, optuna.samplers.TPESampler) and sampler._constant_liar


def test_suggest_returns_a_retry_trials_fixed_values() -> None:
    hpc = parse_hpc(Config(hpc={"search": SPACE}))
    study = optuna.create_study()
    trial = study.ask({"train.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    fixed = trial.suggest_float("train.lr", 1e-4, 1e-2, log=True)
    assert suggest(trial, hpc.specs)["train.lr"] == fixed


@pytest.mark.parametrize("kind, cls", [("median", optuna.pruners.MedianPruner),
                                       ("sha", optuna.pruners.SuccessiveHalvingPruner),
                                       ("hyperband", optuna.pruners.HyperbandPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_pruners(kind: str, cls: type) -> None:
    assert isinstance(build_pruner(PrunerConfig(kind=kind)), cls)  # type: ignore[arg-type]


def test_a_value_outside_the_config_type_is_refused() -> None:
    with pytest.raises(InputError, match="hpc.search.train.lr"):
        check_param("train.lr", ParamSpec(type="categorical", choices=[1e-3, "fast"]), Config())
