"""hpc.search: per-trial sampler seeds, suggest on a retry, pruners, search-space checks."""

from __future__ import annotations

import typing
from dataclasses import replace

import optuna
import pytest

from dualseg.config import Config
from dualseg.errors import InputError
from hpc.config import parse_hpc
from hpc.search import (
    ParamSpec,
    PrunerConfig,
    PrunerKind,
    build_pruner,
    build_sampler,
    check_param,
    suggest,
    trial_seed,
)

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
                                       ("percentile", optuna.pruners.PercentilePruner),
                                       ("patient", optuna.pruners.PatientPruner),
                                       ("sha", optuna.pruners.SuccessiveHalvingPruner),
                                       ("hyperband", optuna.pruners.HyperbandPruner),
                                       ("none", optuna.pruners.NopPruner)])
def test_pruners(kind: str, cls: type) -> None:
    assert isinstance(build_pruner(PrunerConfig(kind=kind)), cls)  # type: ignore[arg-type]


def test_the_default_pruner_is_the_measured_choice() -> None:
    pruner = build_pruner(parse_hpc(Config(hpc={"search": SPACE})).pruner)  # bench_search.py's winner
    assert isinstance(pruner, optuna.pruners.PercentilePruner) and vars(pruner)["_percentile"] == 25.0


def test_every_declared_pruner_kind_is_built() -> None:
    kinds = typing.get_args(PrunerKind)
    built = {type(build_pruner(PrunerConfig(kind=k))) for k in kinds}
    assert len(built) == len(kinds)  # no kind falls through to another's pruner (none's NopPruner)


def test_pruner_settings_reach_optuna() -> None:
    p = PrunerConfig(n_startup_trials=4, n_warmup_steps=2, min_resource=3, reduction_factor=4, percentile=10.0,
                     patience=2)
    built = {k: build_pruner(replace(p, kind=k)) for k in typing.get_args(PrunerKind)}
    expected: dict[str, dict[str, object]] = {  # Optuna keeps each constructor argument as _<name>
        "median": {"_n_startup_trials": 4, "_n_warmup_steps": 2, "_percentile": 50.0},
        "percentile": {"_n_startup_trials": 4, "_n_warmup_steps": 2, "_percentile": 10.0},
        "patient": {"_patience": 2, "_min_delta": 0.0},
        "sha": {"_min_resource": 3, "_reduction_factor": 4},
        "hyperband": {"_min_resource": 3, "_reduction_factor": 4},
        "none": {},
    }
    for kind, settings in expected.items():
        assert {name: vars(built[kind])[name] for name in settings} == settings, kind
    wrapped = vars(built["patient"])["_wrapped_pruner"]
    assert isinstance(wrapped, optuna.pruners.MedianPruner)
    assert (vars(wrapped)["_n_startup_trials"], vars(wrapped)["_n_warmup_steps"]) == (4, 2)


def test_patient_prunes_only_a_stalled_trial_the_median_would_prune() -> None:
    cfg = PrunerConfig(kind="patient", n_startup_trials=1, n_warmup_steps=0, patience=1)
    study = optuna.create_study(pruner=build_pruner(cfg))  # minimised, as val_loss
    good = study.ask()
    for step, value in enumerate([1.0, 0.5, 0.4]):
        good.report(value, step)
    study.tell(good, 0.4)
    improving, stalled = study.ask(), study.ask()
    for trial, values in ((improving, [3.0, 2.5, 2.0]), (stalled, [2.5, 3.0, 3.1])):
        for step, value in enumerate(values):
            trial.report(value, step)
    running = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert build_pruner(replace(cfg, kind="median")).prune(study, running[improving.number])  # median alone would
    assert not improving.should_prune()  # still improving within patience: kept
    assert stalled.should_prune()  # no better than patience epochs ago and worse than the median


def test_a_value_outside_the_config_type_is_refused() -> None:
    with pytest.raises(InputError, match="hpc.search.train.lr"):
        check_param("train.lr", ParamSpec(type="categorical", choices=[1e-3, "fast"]), Config())
