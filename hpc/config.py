"""The ``hpc:`` config section: cluster resources, study storage, search, fault tolerance.

``dualseg.config.Config.hpc`` is carried as a plain dict so the library never knows about SLURM; this
module validates it with the same strict :func:`dualseg.config.from_dict`, so a typo such as
``hpc.trails``, an unknown pruner or a search-space key that is not a real config option fails on the
login node instead of in the 40th array task. Choices are ``Literal`` types, checked by the loader.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

from dualseg.config import MONITOR_MODES, Config, Monitor, from_dict
from dualseg.errors import InputError
from hpc.options import flag
from hpc.retention import KeepPolicy
from hpc.search import ParamSpec, PrunerConfig, SamplerKind, check_param, default_search
from hpc.slurm import time_to_minutes

Objective = Monitor  # the study ranks trials on what the trainer monitors
Executor = Literal["auto", "slurm", "local"]
FINAL_SUFFIX = "/final"  # the final runs' study is "<study>/final", in the same storage (hpc.final)


@dataclass
class FinalConfig:
    """``hpc.final``: after the search, retrain the best configuration(s) as a second study ``<study>/final``.

    ``seeds`` members per configuration (0: off, today's single best trial); ``top_k`` best configurations;
    ``folds: all`` once per fold rotation of a folded dataset (fold i test, i+1 val, the rest train);
    ``refit: train+val`` trains on the validation tiles too (no validation split: ``train.validate: false``), for
    ``epochs`` = ``best`` (the configuration's best epoch in the search, + 1) or a number; ``fixed`` keeps
    ``train.epochs`` with validation and early stopping as in the search, so it is refused with ``train+val``:
    without validation the search's cap is no derived epoch count.
    """

    seeds: int = 0
    top_k: int = 1
    folds: Literal["none", "all"] = "none"
    refit: Literal["train", "train+val"] = "train"
    epochs: Literal["best", "fixed"] | int = "fixed"

    @property
    def on(self) -> bool:
        return self.seeds > 0

    def check(self, trials: int) -> None:
        """The checks that need no data (also run by ``--dry-run``): one error line each."""
        checks = [
            (self.seeds >= 0, f"hpc.final.seeds: must be >= 0 (0: no final runs; got {self.seeds})"),
            (self.top_k >= 1, f"hpc.final.top_k: must be >= 1 (got {self.top_k})"),
            (self.top_k <= trials, f"hpc.final.top_k: {self.top_k} configurations asked, but the search has at most "
                                   f"{trials} complete trials (--trials)"),
            (not isinstance(self.epochs, int) or self.epochs >= 1,
             f"hpc.final.epochs: must be best, fixed or a number >= 1 (got {self.epochs})"),
            (not (self.refit == "train+val" and self.epochs == "fixed"),
             "hpc.final.epochs: refit train+val has no validation split to stop on or choose a checkpoint with, "
             "so train.epochs (the search's cap) is no derived epoch count; use epochs: best (the best trial's "
             "best epoch) or a number"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(message)


# --help groups of the launcher's options (hpc.options.flag fields below; config-only keys have no flag)
SEARCH = "search"
RESOURCES = "resources of every array task (one trial at a time, SLURM)"
EVALUATION = "the evaluation job (after the array)"


@dataclass
class HpcConfig:
    """Everything the launcher, workers and evaluation job need beyond the training config.

    ``time`` is SLURM's ``--time``. ``storage`` is an SQLAlchemy URL; ``None`` means ``$DUALSEG_STORAGE``
    on a cluster or ``<scratch>/<study>/study.db`` locally. ``grace_period`` is how long a trial may go
    without a heartbeat before it is failed and retried (requeued jobs waiting in the queue are kept
    alive through ``squeue``). ``db_outage_s`` is how long workers wait out an unreachable database.
    ``max_resubmits`` bounds how often the evaluation job (or a re-run launch) resubmits workers when
    every worker is gone and the study is short of its count. A field made with :func:`hpc.options.flag`
    is also the launcher's option ``--<name-with-dashes>`` (its help text is the field's); the others are
    set in the config's ``hpc:`` section or with ``--set hpc.<key>=...``.
    """

    nodes: int = flag(1, "nodes per trial (multi-node DDP)", RESOURCES)
    gpus_per_node: int = flag(0, "GPUs per node = tasks per node (0: one CPU task per node)", RESOURCES)
    trials: int = flag(8, "finished (complete + pruned) trials the study must reach", SEARCH)
    workers: int = flag(1, "array size: jobs pulling trials concurrently", SEARCH)
    parallel: int | None = flag(None, "array parallelism (max array tasks running at once)", SEARCH)
    partition: str | None = flag(None, "SLURM partition (checked with sinfo)", RESOURCES)
    account: str | None = flag(None, "SLURM account to charge", RESOURCES)
    qos: str | None = flag(None, "SLURM quality of service", RESOURCES)
    time: str | int = flag("60", "time limit per array task (SLURM syntax: MM, HH:MM:SS, D-HH:MM)", RESOURCES)
    mem: str | None = flag(None, "memory per node, e.g. 32G", RESOURCES)
    cpus_per_task: int | None = flag(None, "CPUs per task (SLURM --cpus-per-task)", RESOURCES)
    storage: str | None = flag(None, "SQLAlchemy URL of the study database "
                               "(default: hpc.storage, $DUALSEG_STORAGE; local: SQLite)", SEARCH)
    study: str = flag("dualseg", "study name", SEARCH)
    scratch: str | None = flag(None, "checkpoints/logs/results root (default: train.scratch, $SCRATCH, ./runs)", SEARCH)
    executor: Executor = flag("auto", "auto: slurm when sinfo works, else local", SEARCH)
    eval: bool = True
    eval_time: str | int = flag("30", "time limit of the evaluation job (default 30 minutes)", EVALUATION)
    eval_cpus: int | None = flag(None, "CPUs of the evaluation job "
                                 "(default: min(--cpus-per-task or 2, the partition's smallest node))", EVALUATION)
    eval_gpus: int | None = flag(None, "GPUs of the evaluation job (default: 1 if --gpus-per-node else 0)", EVALUATION)
    eval_mem: str | None = flag(None, "memory of the evaluation job (default: the partition's default)", EVALUATION)
    objective: Objective = "val_loss"
    sampler: SamplerKind = "tpe"
    seed: int | None = None
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    search: dict[str, Any] = field(default_factory=default_search)
    heartbeat_interval: int = 30
    grace_period: int = 300
    max_retry: int = 3
    max_failed: int = 10
    max_resubmits: int = 2
    db_outage_s: float = 300.0
    env_outage_s: float = 900.0  # a full/failing scratch: how long a trial waits before it is handed back
    collective_timeout_s: float = 1800.0  # a collective of a trial's ranks; above db_outage_s (rank 0 waits there)
    lock_timeout_s: float = 10.0
    poll_interval: float = 5.0
    max_wait_s: float = 600.0  # a job with nothing to train (the last trials run elsewhere) gives its allocation back
    signal_delay_s: int = 90
    setup: list[str] = field(default_factory=list)
    keep: KeepPolicy = field(default_factory=KeepPolicy)
    final: FinalConfig = field(default_factory=FinalConfig)

    @property
    def direction(self) -> str:
        return {"min": "minimize", "max": "maximize"}[MONITOR_MODES[self.objective]]

    @property
    def specs(self) -> dict[str, ParamSpec]:
        """The search space as typed specs (keys are dotted config keys)."""
        return {k: from_dict(ParamSpec, v, f"hpc.search.{k}") for k, v in self.search.items()}


_MEM = re.compile(r"\d+[KMGT]?B?", re.I)


def parse_hpc(cfg: Config, overrides: dict[str, Any] | None = None) -> HpcConfig:
    """Validate ``cfg.hpc`` (plus command-line ``overrides``, which win) into :class:`HpcConfig`."""
    raw = dict(cfg.hpc)
    for key, value in (overrides or {}).items():
        if value is not None:
            raw[key] = value
    hpc = from_dict(HpcConfig, raw, "hpc")
    for name, spec in hpc.specs.items():
        check_param(name, spec, cfg)
    checks = [
        (hpc.nodes >= 1, f"--nodes: must be >= 1 (got {hpc.nodes})"),
        (hpc.gpus_per_node >= 0, f"--gpus-per-node: must be >= 0 (got {hpc.gpus_per_node})"),
        (hpc.trials >= 1, f"--trials: must be >= 1 (got {hpc.trials})"),
        (hpc.workers >= 1, f"--workers: must be >= 1 (got {hpc.workers})"),
        (hpc.parallel is None or hpc.parallel >= 1, f"--parallel: must be >= 1 (got {hpc.parallel})"),
        (hpc.cpus_per_task is None or hpc.cpus_per_task >= 1,
         f"--cpus-per-task: must be >= 1 (got {hpc.cpus_per_task})"),
        (hpc.eval_cpus is None or hpc.eval_cpus >= 1, f"--eval-cpus: must be >= 1 (got {hpc.eval_cpus})"),
        (hpc.eval_gpus is None or hpc.eval_gpus >= 0, f"--eval-gpus: must be >= 0 (got {hpc.eval_gpus})"),
        (hpc.heartbeat_interval >= 1, "hpc.heartbeat_interval: must be >= 1 second"),
        (hpc.grace_period > hpc.heartbeat_interval, "hpc.grace_period: must exceed hpc.heartbeat_interval"),
        (hpc.max_retry >= 0, "hpc.max_retry: must be >= 0"),
        (hpc.max_resubmits >= 0, "hpc.max_resubmits: must be >= 0"),
        (hpc.db_outage_s >= 0, "hpc.db_outage_s: must be >= 0"),
        (hpc.env_outage_s >= 0, "hpc.env_outage_s: must be >= 0"),
        (hpc.collective_timeout_s > hpc.db_outage_s,
         f"hpc.collective_timeout_s: must exceed hpc.db_outage_s ({hpc.db_outage_s:g} s): while rank 0 waits out a "
         f"database outage the other ranks wait in a collective (got {hpc.collective_timeout_s:g})"),
        (hpc.lock_timeout_s > 0, "hpc.lock_timeout_s: must be > 0"),
        (hpc.max_wait_s >= 0, "hpc.max_wait_s: must be >= 0"),
        (re.fullmatch(r"[A-Za-z0-9_.-]+(/final)?", hpc.study) is not None,
         f"--study: {hpc.study!r} may only contain letters, digits, '_', '-', '.'"),
        (hpc.mem is None or _MEM.fullmatch(hpc.mem) is not None, f"--mem: cannot parse {hpc.mem!r} (use e.g. 16G)"),
        (cfg.train.validate, f"train.validate: false leaves the search no validation metric to rank trials on "
                             f"(hpc.objective: {hpc.objective}); training without validation is for the final runs "
                             "(hpc.final.refit: train+val sets it per member)"),
        (hpc.eval_mem is None or _MEM.fullmatch(hpc.eval_mem) is not None,
         f"--eval-mem: cannot parse {hpc.eval_mem!r} (use e.g. 16G)"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    hpc.pruner.check()
    hpc.final.check(hpc.trials)
    time_to_minutes(hpc.time)
    time_to_minutes(hpc.eval_time, "--eval-time")
    return hpc
