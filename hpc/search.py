"""The search: parameter specs, ``suggest``, sampler and pruner construction.

Samplers are not stored in the database, so every worker builds its own. Each trial gets a sampler
seeded from ``(hpc.seed, trial number)``: the same seed and config give the same parameter sequence
run after run, and a requeued or relaunched job can never replay earlier draws (a per-job seed did:
a restarted job drew exactly the parameters of the trial before). TPE runs with ``constant_liar`` so
trials sampled concurrently by different workers are kept apart.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import optuna

from dualseg.config import Config, apply_overrides
from dualseg.errors import InputError

if TYPE_CHECKING:
    from hpc.config import HpcConfig

ParamType = Literal["int", "float", "categorical"]
PrunerKind = Literal["median", "percentile", "patient", "sha", "hyperband", "none"]
SamplerKind = Literal["tpe", "random"]


@dataclass
class ParamSpec:
    """One searched hyperparameter: ``int``/``float`` ranges (optionally log) or ``categorical``."""

    type: ParamType = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class PrunerConfig:
    """Which Optuna pruner stops bad trials early over epochs (``none`` disables pruning).

    ``median``/``percentile`` compare a trial with the others at the same epoch (after ``n_startup_trials`` finished
    trials and ``n_warmup_steps`` epochs; ``percentile`` keeps the best ``percentile`` %, median is 50); ``patient``
    is median gated by PatientPruner (only a trial that has stopped improving for ``patience`` epochs);
    ``sha``/``hyperband`` promote the best 1/``reduction_factor`` at each rung from ``min_resource`` epochs.
    Optuna's ThresholdPruner (an absolute bound in objective units, a divergence guard rather than a comparison) and
    WilcoxonPruner (steps are instances of one fixed evaluation set, not epochs of a changing model) do not fit
    epoch-wise validation metrics and are not offered. The default, ``percentile`` at 25, is the measured choice:
    fewest epochs among the pruners that keep the unpruned best.
    """

    kind: PrunerKind = "percentile"  # measured: bench_search.py, README "Pruning"
    n_startup_trials: int = 2
    n_warmup_steps: int = 1
    min_resource: int = 1
    reduction_factor: int = 3
    percentile: float = 25.0
    patience: int = 1

    def check(self) -> None:
        """Settings Optuna would refuse only when the first worker builds the pruner: one error line each."""
        checks = [
            (self.n_startup_trials >= 0, f"hpc.pruner.n_startup_trials: must be >= 0 (got {self.n_startup_trials})"),
            (self.n_warmup_steps >= 0, f"hpc.pruner.n_warmup_steps: must be >= 0 (got {self.n_warmup_steps})"),
            (self.min_resource >= 1, f"hpc.pruner.min_resource: must be >= 1 (got {self.min_resource})"),
            (self.reduction_factor >= 2, f"hpc.pruner.reduction_factor: must be >= 2 (got {self.reduction_factor})"),
            (0 <= self.percentile <= 100, f"hpc.pruner.percentile: must be between 0 and 100 (got {self.percentile})"),
            (self.patience >= 0, f"hpc.pruner.patience: must be >= 0 (got {self.patience})"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


def default_search() -> dict[str, Any]:
    """The search space of the original seed plus width, temporal aggregation and fusion."""
    return {
        "model.levels": {"type": "int", "low": 2, "high": 4},
        "train.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "train.batch_size": {"type": "categorical", "choices": [4, 8, 16]},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "train.weight_decay": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
        "model.base_width": {"type": "categorical", "choices": [16, 32, 64]},
        "model.temporal": {"type": "categorical", "choices": ["ltae", "mean"]},
        "model.fusion": {"type": "categorical", "choices": ["concat", "sum", "early"]},
    }


def check_param(name: str, spec: ParamSpec, cfg: Config) -> None:
    """The range is sane and every value it can produce type-checks as that config key."""
    where = f"hpc.search.{name}"
    if spec.type in ("int", "float"):
        if spec.low is None or spec.high is None or spec.low > spec.high:
            raise InputError(f"config: {where}: needs low <= high (got {spec.low}, {spec.high})")
        if spec.log and spec.low <= 0:
            raise InputError(f"config: {where}: log scale needs low > 0")
        if spec.type == "int" and (spec.low != int(spec.low) or spec.high != int(spec.high)):
            raise InputError(f"config: {where}: int range needs integer bounds")
        cast = int if spec.type == "int" else float
        probes: list[Any] = [cast(spec.low), cast(spec.high)]  # both corners: a trial may draw either
    else:
        if not spec.choices:
            raise InputError(f"config: {where}: categorical needs a non-empty 'choices' list")
        probes = list(spec.choices)
    for value in probes:
        try:
            apply_overrides(cfg, {name: value})
        except InputError as exc:
            raise InputError(f"config: {where}: {exc}".replace("config: config:", "config:")) from None


def suggest(trial: optuna.Trial, specs: dict[str, ParamSpec]) -> dict[str, Any]:
    """Sample the search space (a re-queued trial returns the values it already has)."""
    params: dict[str, Any] = {}
    for name, s in specs.items():
        if s.type == "int":
            assert s.low is not None and s.high is not None  # checked by check_param
            params[name] = trial.suggest_int(name, int(s.low), int(s.high), step=int(s.step or 1), log=s.log)
        elif s.type == "float":
            assert s.low is not None and s.high is not None
            params[name] = trial.suggest_float(name, s.low, s.high, step=s.step, log=s.log)
        else:
            params[name] = trial.suggest_categorical(name, list(s.choices or []))
    return params


def trial_seed(seed: int | None, number: int) -> int | None:
    """A well-mixed seed for trial ``number`` (None: not reproducible, as asked)."""
    if seed is None:
        return None
    return int.from_bytes(hashlib.sha256(f"{seed}:{number}".encode()).digest()[:4], "big")


def build_sampler(hpc: HpcConfig, number: int) -> optuna.samplers.BaseSampler:
    """The sampler that draws trial ``number``: TPE (default) or random, seeded per trial."""
    seed = trial_seed(hpc.seed, number)
    if hpc.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(2, min(10, hpc.trials // 3)),
                                      constant_liar=True)


def build_pruner(p: PrunerConfig) -> optuna.pruners.BasePruner:
    """The configured pruner over epochs (``none``: never prune)."""
    if p.kind in ("median", "patient"):
        median = optuna.pruners.MedianPruner(n_startup_trials=p.n_startup_trials, n_warmup_steps=p.n_warmup_steps)
        if p.kind == "median":
            return median
        with warnings.catch_warnings():  # "experimental" since Optuna 2.8; chosen knowingly, not every worker's log
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(median, patience=p.patience)
    if p.kind == "percentile":
        return optuna.pruners.PercentilePruner(p.percentile, n_startup_trials=p.n_startup_trials,
                                               n_warmup_steps=p.n_warmup_steps)
    if p.kind == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    if p.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=p.min_resource, reduction_factor=p.reduction_factor)
    return optuna.pruners.NopPruner()
