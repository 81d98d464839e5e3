"""The ``hpc:`` config section: cluster resources, study storage, search space, pruner.

``dualseg.config.Config.hpc`` is carried as a plain dict so the library never knows about SLURM;
this module validates it with the same strict :func:`dualseg.config.from_dict`, so a typo such as
``hpc.trails`` or a search-space key that is not a real config option fails on the login node
instead of in the 40th array task.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dualseg.config import Config, apply_overrides, from_dict
from dualseg.errors import InputError

PRUNERS = ("median", "sha", "hyperband", "none")
SAMPLERS = ("tpe", "random")
EXECUTORS = ("auto", "slurm", "local")
OBJECTIVES = {"val_loss": "minimize", "val_miou": "maximize", "val_oa": "maximize"}


@dataclass
class ParamSpec:
    """One searched hyperparameter: ``int``/``float`` ranges (optionally log) or ``categorical``."""

    type: str = "float"
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[Any] | None = None


@dataclass
class PrunerConfig:
    """Which Optuna pruner stops bad trials early (``none`` disables pruning)."""

    kind: str = "median"
    n_startup_trials: int = 2
    n_warmup_steps: int = 1
    min_resource: int = 1
    reduction_factor: int = 3


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


@dataclass
class HpcConfig:
    """Everything the launcher, workers and evaluation job need beyond the training config.

    ``time`` is SLURM's ``--time`` (``MM``, ``HH:MM:SS`` or ``D-HH:MM``). ``storage`` is an SQLAlchemy
    URL; ``None`` means ``$DUALSEG_STORAGE`` on a cluster or ``<scratch>/<study>/study.db`` locally.
    ``grace_period`` must exceed the time a requeued job may wait in the queue, otherwise its
    trial is declared stale and retried as a new trial number (still from its checkpoint).
    """

    nodes: int = 1
    gpus_per_node: int = 0
    trials: int = 8
    workers: int = 1
    parallel: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time: str | int = "60"
    mem: str | None = None
    cpus_per_task: int | None = None
    storage: str | None = None
    study: str = "dualseg"
    scratch: str | None = None
    executor: str = "auto"
    eval: bool = True
    objective: str = "val_loss"
    sampler: str = "tpe"
    seed: int | None = None
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    search: dict[str, Any] = field(default_factory=default_search)
    heartbeat_interval: int = 30
    grace_period: int = 300
    max_retry: int = 3
    max_failed: int = 10
    pool_size: int = 2
    db_retries: int = 5
    poll_interval: float = 5.0
    signal_delay_s: int = 90
    setup: list[str] = field(default_factory=list)
    eval_time: str | int = "30"


_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def time_to_minutes(value: str | int) -> int:
    """Convert SLURM ``--time`` syntax to whole minutes (submitit's ``timeout_min``)."""
    m = _TIME_RE.match(str(value).strip())
    if not m:
        raise InputError(f"--time: cannot parse {value!r} (use MM, HH:MM:SS or D-HH:MM)")
    days, a, b, c = m.groups()
    d = int(days or 0)
    if days is not None:  # D-HH[:MM[:SS]]
        h, mi, s = int(a), int(b or 0), int(c or 0)
    elif c is not None:  # HH:MM:SS
        h, mi, s = int(a), int(b), int(c)
    elif b is not None:  # MM:SS
        h, mi, s = 0, int(a), int(b)
    else:  # MM
        h, mi, s = 0, int(a), 0
    minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes < 1:
        raise InputError(f"--time: {value!r} is shorter than one minute")
    return minutes


def _check_param(name: str, spec: ParamSpec, cfg: Config) -> None:
    where = f"hpc.search.{name}"
    if spec.type in ("int", "float"):
        if spec.low is None or spec.high is None or spec.low > spec.high:
            raise InputError(f"config: {where}: needs low <= high (got {spec.low}, {spec.high})")
        if spec.log and spec.low <= 0:
            raise InputError(f"config: {where}: log scale needs low > 0")
        probe: Any = int(spec.low) if spec.type == "int" else float(spec.low)
        if spec.type == "int" and (spec.low != int(spec.low) or spec.high != int(spec.high)):
            raise InputError(f"config: {where}: int range needs integer bounds")
        probes = [probe]
    elif spec.type == "categorical":
        if not spec.choices:
            raise InputError(f"config: {where}: categorical needs a non-empty 'choices' list")
        probes = list(spec.choices)
    else:
        raise InputError(f"config: {where}: type must be int, float or categorical (got {spec.type!r})")
    for value in probes:  # the key must exist and every value must type-check in Config
        try:
            apply_overrides(cfg, {name: value})
        except InputError as exc:
            raise InputError(f"config: {where}: {exc}".replace("config: config:", "config:")) from None


def parse_hpc(cfg: Config, overrides: dict[str, Any] | None = None) -> HpcConfig:
    """Validate ``cfg.hpc`` (plus command-line ``overrides``, which win) into :class:`HpcConfig`."""
    raw = dict(cfg.hpc)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    hpc = from_dict(HpcConfig, raw, "hpc")
    search = {k: from_dict(ParamSpec, v, f"hpc.search.{k}") for k, v in hpc.search.items()}
    for name, spec in search.items():
        _check_param(name, spec, cfg)
    checks = [
        (hpc.nodes >= 1, f"--nodes: must be >= 1 (got {hpc.nodes})"),
        (hpc.gpus_per_node >= 0, f"--gpus-per-node: must be >= 0 (got {hpc.gpus_per_node})"),
        (hpc.trials >= 1, f"--trials: must be >= 1 (got {hpc.trials})"),
        (hpc.workers >= 1, f"--workers: must be >= 1 (got {hpc.workers})"),
        (hpc.parallel is None or hpc.parallel >= 1, f"--parallel: must be >= 1 (got {hpc.parallel})"),
        (hpc.cpus_per_task is None or hpc.cpus_per_task >= 1, f"--cpus-per-task: must be >= 1 (got {hpc.cpus_per_task})"),
        (hpc.executor in EXECUTORS, f"--executor: must be one of {', '.join(EXECUTORS)} (got {hpc.executor!r})"),
        (hpc.objective in OBJECTIVES, f"hpc.objective: must be one of {', '.join(OBJECTIVES)} (got {hpc.objective!r})"),
        (hpc.sampler in SAMPLERS, f"hpc.sampler: must be one of {', '.join(SAMPLERS)} (got {hpc.sampler!r})"),
        (hpc.pruner.kind in PRUNERS, f"hpc.pruner.kind: must be one of {', '.join(PRUNERS)} (got {hpc.pruner.kind!r})"),
        (hpc.heartbeat_interval >= 1, "hpc.heartbeat_interval: must be >= 1 second"),
        (hpc.grace_period > hpc.heartbeat_interval, "hpc.grace_period: must exceed hpc.heartbeat_interval"),
        (hpc.pool_size >= 1, "hpc.pool_size: must be >= 1"),
        (hpc.max_retry >= 0, "hpc.max_retry: must be >= 0"),
        (re.fullmatch(r"[A-Za-z0-9_.-]+", hpc.study) is not None,
         f"--study: {hpc.study!r} may only contain letters, digits, '_', '-', '.'"),
        (hpc.mem is None or re.fullmatch(r"\d+[KMGT]?B?", hpc.mem, re.I) is not None,
         f"--mem: cannot parse {hpc.mem!r} (use e.g. 16G)"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    time_to_minutes(hpc.time)
    time_to_minutes(hpc.eval_time)
    return hpc


def search_specs(hpc: HpcConfig) -> dict[str, ParamSpec]:
    """The validated search space as typed specs (keys are dotted config keys)."""
    return {k: from_dict(ParamSpec, v, f"hpc.search.{k}") for k, v in hpc.search.items()}
