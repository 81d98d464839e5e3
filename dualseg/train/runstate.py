"""The state of one training run: what ``fit`` builds, resumes from and checkpoints.

Kept apart from the epoch loop (:mod:`dualseg.train.trainer`) because these are the parts that touch
disk and every rank's copy of the model: set-up (a bad run dir or one rank failing to build its model
fails every rank alike), exact resume from ``last.pt``/``last.prev.pt``/``best.pt``, and the atomic,
CRC-checked, rotated checkpoint written by rank 0 alone.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from dualseg.config import MONITOR_MODES, Config, to_dict
from dualseg.errors import InputError, TrainingError
from dualseg.train import rundir
from dualseg.train.agree import agree
from dualseg.train.checkpoint import (
    capture_rng,
    load_checkpoint,
    load_model_state,
    pick_resume,
    save_checkpoint,
    unwrap,
)
from dualseg.train.distributed import (
    DistInfo,
    broadcast_flag,
    make_gather,
    on_main,
)
from dualseg.train.early_stopping import EarlyStopping
from dualseg.train.loaders import eval_loader, steps_per_epoch, train_loader
from dualseg.train.log import set_log_context
from dualseg.train.optim import build_optimizer, load_optimizer_state
from dualseg.train.schedule import build_scheduler
from dualseg.train.state import bundle_meta, config_changes, gather_rng

log = logging.getLogger("dualseg.train.trainer")


class RunState:
    """One run's state: built from the config (data, model, optimizer, loaders), restored from the newest
    loadable checkpoint, saved at every epoch's end. :class:`dualseg.train.trainer` drives the epochs."""

    def __init__(self, cfg: Config, info: DistInfo, run_dir: Path) -> None:
        self.cfg, self.info, self.run_dir = cfg, info, run_dir
        self.monitor = cfg.train.monitor
        self.early = EarlyStopping(cfg.train.patience, mode=MONITOR_MODES[self.monitor])
        self.history: list[dict[str, Any]] = []
        self.epoch, self.step, self.loss_sum = 0, 0, 0.0
        self.stopped: str | None = None
        self.rng: dict[str, Any] | None = None
        self.last_ok = False  # last.pt is a good state: the next save may rotate it to last.prev.pt
        self.model: torch.nn.Module  # set by _build_model, dropped by close()

    def close(self) -> None:
        """Drop the model, DDP wrapper, optimizer and loaders (they hold memory and the process group)."""
        for name in ("model", "optimizer", "scheduler", "loader", "val_loader", "sampler", "bundle", "weight"):
            self.__dict__.pop(name, None)

    # ---- setup -----------------------------------------------------------------------------
    def _check_run_dir(self) -> None:
        """Rank 0 proves the run dir writable; every rank raises the same InputError if not."""
        error = None
        if self.info.is_main:
            try:
                rundir.ensure_writable(self.run_dir)
            except InputError as exc:
                error = str(exc)
        if broadcast_flag(error is not None, self.info.device):
            raise InputError(error or f"scratch: run directory {self.run_dir} is not writable (see rank 0)")

    def _build_data(self) -> None:
        cfg, info = self.cfg, self.info
        set_log_context(rank=info.rank, world=info.world_size, epoch=None)
        self._check_run_dir()
        from dualseg.data.build import build_data, loader_workers, usable_cpus
        from dualseg.model import check_patch_size, validate_model_config

        validate_model_config(cfg.model)  # bad model options fail before any data is read
        check_patch_size(cfg.model, cfg.data.patch_size)
        # resolved once, in the rank, from the CPUs it was actually given (the preload and both loaders agree)
        self.workers = loader_workers(cfg.data.num_workers)
        log.info("data loader: %d worker process(es) per loader (data.num_workers=%s, %d CPU(s) in this rank's "
                 "affinity mask)", self.workers, cfg.data.num_workers, usable_cpus())
        data_cfg = dataclasses.replace(cfg.data, num_workers=self.workers)
        # without validation (train.validate: false) only the train tiles are read; the band statistics come from
        # them, i.e. from every tile the model trains on
        splits = ("train", "val") if cfg.train.validate else ("train",)
        self.bundle = build_data(data_cfg, splits=splits, gather=make_gather(info.device), device=info.device)
        for split in splits:
            ds = self.bundle.datasets.get(split)
            if ds is None or len(ds) == 0:
                raise InputError(f"data: the {split} split has no samples (check data.{split}_tiles / splits file)")

    def _build_model(self) -> None:
        cfg, info = self.cfg, self.info
        from dualseg.data import collate
        from dualseg.model import build_model
        from dualseg.model.layout import resolve_memory_format, set_memory_format

        torch.manual_seed(cfg.train.seed)  # same init on every rank (DDP also broadcasts rank 0's)
        np.random.seed(cfg.train.seed)
        error: Exception | None = None
        try:  # one rank out of memory here must not leave the others in DDP's set-up collectives
            model = build_model(cfg.model, self.bundle.s1_channels, self.bundle.s2_channels,
                                self.bundle.num_classes).to(info.device)
            set_memory_format(model, resolve_memory_format(cfg.train.memory_format, info.device))  # before DDP
        except Exception as exc:  # noqa: BLE001 - re-raised below on every rank, as one PeerFailure
            error = exc
        agree(torch.zeros(1, device=info.device), error)
        self.model = model
        if info.distributed:
            ids = [info.device.index] if info.device.type == "cuda" else None
            self.model = DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)
        self.weight = (
            self.bundle.class_weights.to(info.device, torch.float32)
            if getattr(self.bundle, "class_weights", None) is not None
            else None
        )
        t = cfg.train
        self.optimizer = build_optimizer(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        pin = info.device.type == "cuda"
        self.loader, self.sampler, self.generator = train_loader(
            self.bundle.datasets["train"], collate, batch_size=t.batch_size, rank=info.rank,
            world_size=info.world_size, seed=t.seed, num_workers=self.workers, pin_memory=pin,
            max_t=cfg.data.max_t, time_buckets=cfg.data.time_buckets,
        )
        if t.validate:
            self.val_loader = eval_loader(
                self.bundle.datasets["val"], collate, batch_size=t.batch_size, rank=info.rank,
                world_size=info.world_size, num_workers=self.workers, pin_memory=pin, max_t=cfg.data.max_t,
                time_buckets=cfg.data.time_buckets,
            )
        self.steps_per_epoch = steps_per_epoch(len(self.bundle.datasets["train"]), t.batch_size, info.world_size)
        total = t.epochs * self.steps_per_epoch
        self.scheduler = build_scheduler(self.optimizer, total, t.warmup_epochs * self.steps_per_epoch)

    def _fresh_start(self) -> None:
        if self.info.is_main:  # a fresh start must not leave an older run's files to resume from
            for name in rundir.CHECKPOINTS:
                (self.run_dir / name).unlink(missing_ok=True)
            rundir.rewrite_metrics(self.run_dir, [])

    def _resume(self, resume: bool) -> None:
        last, state = pick_resume(self.run_dir, rundir.CHECKPOINTS, self.info.is_main) if resume else (None, None)
        if last is None:
            self._fresh_start()
            return
        if state is None:  # rank 0 has it already; load_state_dict moves it to the device
            state = load_checkpoint(last, map_location=self.info.device)
        old_monitor = state.get("config", {}).get("train", {}).get("monitor", "val_loss")  # older: val_loss
        if old_monitor != self.monitor:  # best.pt and the early-stopping state follow the old metric
            raise InputError(f"config: train.monitor={self.monitor} but {last} chose best.pt on {old_monitor}; "
                             "resume with the same train.monitor or start over (resume=False / --no-resume)")
        load_model_state(self.model, state["model"], source=f"checkpoint {last}")
        changed = config_changes(state.get("config", {}), to_dict(self.cfg))
        if changed:
            log.warning("resuming %s with a changed config (optimizer/scheduler state comes from the "
                        "checkpoint): %s", last, "; ".join(changed))
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.early.load_state_dict(state["early_stopping"])
        self.history = list(state["history"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.loss_sum, self.stopped = float(state["train_loss_sum"]), state.get("stopped")
        self.last_ok = last.name == rundir.LAST
        rngs = state.get("rng") or []
        if self.step > 0 and len(rngs) == self.info.world_size:
            self.rng = rngs[self.info.rank]  # mid-epoch: continue each rank's exact random stream
        elif self.step > 0:
            log.warning("resuming mid-epoch with a different world size: random streams re-seeded")
        if self.info.is_main:
            rundir.rewrite_metrics(self.run_dir, self.history)
        log.info("resumed from %s at epoch %d step %d", last, self.epoch, self.step)

    # ---- checkpointing ---------------------------------------------------------------------
    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "format": 1,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": None,  # bf16 autocast needs no GradScaler
            "epoch": self.epoch,  # completed epochs
            "step": self.step,  # steps done in epoch `epoch` (mid-epoch interruption)
            "train_loss_sum": self.loss_sum,
            "early_stopping": self.early.state_dict(),
            "history": self.history,
            "stopped": self.stopped,
            "rng": rng,
            "world_size": self.info.world_size,
            "config": to_dict(self.cfg),
            "data": bundle_meta(self.bundle),
        }

    def _save(self, best: bool) -> None:
        # Weights are identical on all ranks, so all agree; catches a NaN produced by the last
        # optimizer step (its loss was still finite) before it can reach a checkpoint.
        params = [p.detach() for p in unwrap(self.model).parameters()]
        if not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            raise TrainingError(f"training: non-finite weights after {self.epoch} epoch(s) + {self.step} step(s); "
                                "not checkpointing — lower train.lr or raise train.grad_clip")
        rng = gather_rng(capture_rng())  # collective: every rank calls it

        def write() -> None:
            state = self._state(rng)
            if best:
                save_checkpoint(state, self.run_dir / rundir.BEST)
            # the good last.pt stays (as last.prev.pt) until the new one is durable; a damaged one
            # we resumed around is overwritten instead, so it never replaces a good last.prev.pt
            save_checkpoint(state, self.run_dir / rundir.LAST,
                            previous=self.run_dir / rundir.PREV if self.last_ok else None)

        on_main(write, f"checkpoint: rank 0 could not write to {self.run_dir}", self.info)
        self.last_ok = True
