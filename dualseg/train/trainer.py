"""``fit``: the one training entry point, used by the CLI and once per trial by the HPO layer.

Contract (docs/architecture.md "Trainer"): identical all-reduced metrics on every rank, rank 0's
callback decision broadcast, ``last.pt`` every epoch (the one before kept as ``last.prev.pt``) and
``best.pt`` on the best ``train.monitor`` value (rank 0, atomic), exact continuation from the newest
loadable checkpoint. ``should_stop`` (rank 0's answer is broadcast) is polled from start-up to the
end of validation, so a preempted job saves its progress and returns ``stopped="interrupted"``.
An exception leaves no DDP wrapper or process group of ours behind (see ``failures``).
``train.validate: false`` (a refit on train+val, whose epoch count was derived elsewhere) drops the validation
split: exactly ``train.epochs`` epochs, no early stopping, every epoch's model saved as ``best.pt`` (the last
one is the run's model) and ``train_loss`` as the monitored value.
"""

from __future__ import annotations

import gc
import logging
import math
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from dualseg.config import Config, apply_overrides
from dualseg.errors import InputError, TrainingError
from dualseg.train import rundir
from dualseg.train.agree import decide
from dualseg.train.checkpoint import (
    restore_rng,
    unwrap,
)
from dualseg.train.distributed import (
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    on_main,
)
from dualseg.train.log import set_log_context
from dualseg.train.metrics import metrics_from_confusion
from dualseg.train.progress import progress_bar
from dualseg.train.runstate import RunState
from dualseg.train.state import check_train_config, epoch_seed
from dualseg.train.steps import EpochProgress, StopRequested, evaluate_batches, train_epoch
from dualseg.train.tblog import EpochBoard

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, float]], bool]
FINISHED = ("completed", "early_stopping", "callback")


@dataclass
class FitResult:
    """What a run achieved; ``stopped`` is completed | early_stopping | callback | interrupted.

    ``best_epoch`` is the epoch of ``best.pt``, chosen on ``monitor`` (``train.monitor``) whose
    value there is ``best_value``; ``best_val_loss`` is that epoch's validation loss. With no
    finished epoch: ``best_epoch == -1`` and both values are NaN.
    """

    best_val_loss: float
    best_epoch: int
    epochs_run: int
    stopped: str
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path = Path(".")
    monitor: str = "val_loss"
    best_value: float = math.nan

    @property
    def best_metrics(self) -> dict[str, Any]:
        """The history record of the best epoch (empty if no epoch finished)."""
        return next((h for h in self.history if h["epoch"] == self.best_epoch), {})


def fit(
    cfg: Config,
    *,
    run_dir: Path | None = None,
    callback: EpochCallback | None = None,
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
    overrides: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``cfg`` (single process, or DDP from torchrun-style env / an existing process group).

    ``overrides`` (dotted keys, e.g. a trial's hyperparameters ``{"train.lr": 3e-4}``) are applied
    with type checks first. ``should_stop`` is polled on rank 0 after the data is built, before the
    first step, every ``train.log_every`` steps and validation batches, and after each epoch; when it
    says True, progress (mid-epoch included) is saved to ``last.pt`` and fit returns
    ``stopped="interrupted"``; a later ``fit`` continues exactly.
    """
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    check_train_config(cfg)
    info = init_distributed(cfg.train.device)
    runner: _Fit | None = None
    try:
        runner = _Fit(cfg, info, Path(run_dir) if run_dir is not None else rundir.default_run_dir(cfg))
        return runner.run(callback, resume, should_stop)
    except BaseException as exc:
        # The traceback keeps every frame below us alive (model, DDP wrapper, optimizer, batches):
        # clear them so the memory and the DDP reducer's hold on the process group go now, while
        # the caller handles the error and moves on to its next trial.
        traceback.clear_frames(exc.__traceback__)
        raise
    finally:
        if runner is not None:
            runner.close()
        del runner
        if info.distributed:
            # The DDP reducer (in reference cycles) holds the process group; free it now, not at
            # interpreter exit where gloo's threads can abort the process.
            gc.collect()
        cleanup(info)


class _Fit(RunState):
    """The phases of ``fit`` over one run's state: epochs, validation, the callback, stop points."""

    def close(self) -> None:
        board = self.__dict__.pop("board", None)
        if board is not None:
            board.close()
        super().close()

    # ---- the loop --------------------------------------------------------------------------
    def _result(self) -> FitResult:
        monitor: str
        if self.cfg.train.validate:
            epoch, monitor = self.early.best_epoch, self.monitor
        else:  # no validation: the last epoch's model is best.pt, known by its own training loss
            epoch, monitor = (int(self.history[-1]["epoch"]) if self.history else -1), "train_loss"
        best = next((h for h in self.history if h["epoch"] == epoch), None)
        return FitResult(
            best_val_loss=float(best.get("val_loss", math.nan)) if best else math.nan, best_epoch=epoch,
            epochs_run=self.epoch, stopped=self.stopped or "interrupted", history=self.history,
            run_dir=self.run_dir, monitor=monitor, best_value=float(best[monitor]) if best else math.nan,
        )

    def _poll(self, should_stop: Callable[[], bool] | None) -> bool:
        """Rank 0's ``should_stop()``, on every rank (a collective when given; if it raises, every rank does)."""
        return should_stop is not None and decide(should_stop if self.info.is_main else None, self.info)

    def _interrupted(self, where: str, save: bool) -> FitResult:
        self.stopped = "interrupted"
        if save:
            self._save(best=False)
        log.info("interrupted %s (epoch %d step %d)%s", where, self.epoch, self.step,
                 f"; progress saved to {self.run_dir}" if save else "")
        set_log_context(epoch=None)
        barrier()  # the checkpoint is on disk before any rank returns
        return self._result()

    def run(
        self, callback: EpochCallback | None, resume: bool, should_stop: Callable[[], bool] | None
    ) -> FitResult:
        self._build_data()
        if self._poll(should_stop):  # data and statistics can take minutes: a signal may be waiting
            return self._interrupted("after loading the data", save=False)
        self._build_model()
        self._resume(resume)
        if self.stopped in FINISHED:
            log.info("run in %s already finished (%s)", self.run_dir, self.stopped)
            return self._result()
        self.stopped = None
        if self._poll(should_stop):  # nothing new to save: the state we resumed from is on disk
            return self._interrupted("before the first step", save=False)
        t = self.cfg.train
        self.board = EpochBoard(self.cfg, self.run_dir, self.info.is_main)  # TensorBoard, if installed
        if not t.validate:
            log.info("no validation split (train.validate: false): %d epochs on %d train tiles, no early stopping; "
                     "the last epoch's model is best.pt", t.epochs, len(self.bundle.tiles.get("train", [])))
        while self.epoch < t.epochs:
            set_log_context(epoch=self.epoch)
            t0 = time.monotonic()
            finished, stop_asked = self._train_one_epoch(should_stop)
            train_time = round(time.monotonic() - t0, 3)  # this process's steps (a resumed epoch: the rest)
            if not finished or stop_asked:  # at the last step too: the resume validates this epoch
                return self._interrupted("during training", save=True)
            try:
                metrics, record = self._validate(should_stop) if t.validate else self._train_metrics()
            except StopRequested:  # all steps of the epoch are kept; the resume re-validates it
                return self._interrupted("during validation", save=True)
            improved = self.early.step(metrics[self.monitor], self.epoch) if t.validate else True
            record["best"] = improved
            record["train_time_s"] = train_time
            self.history.append(record)
            # rank 0's answer (it may talk to a database and raise: then every rank raises alike)
            stop_cb = decide(partial(callback, self.epoch, dict(metrics)) if callback else None, self.info)
            self.epoch, self.step, self.loss_sum = self.epoch + 1, 0, 0.0
            if stop_cb:
                self.stopped = "callback"
            elif self.early.should_stop:
                self.stopped = "early_stopping"
            elif self.epoch >= t.epochs:
                self.stopped = "completed"
            on_main(partial(rundir.append_metrics, self.run_dir, record),
                    f"metrics: rank 0 could not write to {self.run_dir}", self.info)
            self.board.epoch(record, list(self.bundle.class_names))  # rank 0; never fails the run
            self._save(best=improved)
            if t.validate:
                log.info(
                    "epoch %d: train_loss %.4f val_loss %.4f val_oa %.4f val_miou %.4f%s",
                    record["epoch"], record["train_loss"], record["val_loss"], record["val_oa"], record["val_miou"],
                    f" (best {self.monitor})" if improved else "",
                )
            else:
                log.info("epoch %d: train_loss %.4f (no validation)", record["epoch"], record["train_loss"])
            if self.stopped is not None:
                break
            if self._poll(should_stop):
                self.stopped = "interrupted"
                break
        set_log_context(epoch=None)
        barrier()  # best.pt/last.pt are on disk before any rank returns
        return self._result()

    def _train_one_epoch(self, should_stop: Callable[[], bool] | None) -> tuple[bool, bool]:
        """Train the rest of epoch ``self.epoch``: (finished, stop requested at its last step).

        Not finished = interrupted mid-epoch; the progress is kept in ``self.step``/``self.loss_sum``.
        """
        e, info = self.epoch, self.info
        epoch_seed(self.cfg.train.seed, info.rank, e)
        if self.rng is not None:
            restore_rng(self.rng)
            self.rng = None
        ds = self.bundle.datasets["train"]
        if hasattr(ds, "set_epoch"):
            ds.set_epoch(e)
        self.sampler.set_epoch(e)
        self.sampler.skip = self.step * self.cfg.train.batch_size
        self.generator.manual_seed(self.cfg.train.seed * 100_003 + e)
        progress = EpochProgress(torch.tensor(self.loss_sum, dtype=torch.float64, device=info.device), self.step)
        bar = progress_bar(self.loader, enabled=info.is_main, desc=f"epoch {e}", total=len(self.loader))
        try:
            out = train_epoch(
                self.model, bar, self.optimizer, self.scheduler, weight=self.weight,
                ignore_index=self.bundle.ignore_index, device=info.device, streams=self.cfg.model.streams,
                amp=self.cfg.train.amp, grad_clip=self.cfg.train.grad_clip, check_every=self.cfg.train.log_every,
                total_steps=self.steps_per_epoch, progress=progress, should_stop=should_stop if info.is_main else None,
                epoch=e, on_check=(lambda v: bar.set_postfix(loss=f"{v:.4f}")) if hasattr(bar, "set_postfix") else None,
            )
        finally:
            if hasattr(bar, "close"):
                bar.close()
        # Rank-average of the loss sum: identical on every rank, and a resumed epoch (all ranks
        # restart from rank 0's checkpoint) adds the rest to the same value a straight run has.
        total = all_reduce_sum(out.loss_sum.clone()) / info.world_size
        self.step, self.loss_sum = out.steps, float(total)
        return not out.interrupted, out.stop_requested

    def _train_metrics(self) -> tuple[dict[str, float], dict[str, Any]]:
        """Epoch ``self.epoch``'s metrics without a validation split: its training loss and learning rate."""
        metrics = {"epoch": float(self.epoch), "train_loss": self.loss_sum / max(1, self.step),
                   "lr": float(self.optimizer.param_groups[0]["lr"])}
        return metrics, {**metrics, "epoch": self.epoch}

    def _validate(self, should_stop: Callable[[], bool] | None) -> tuple[dict[str, float], dict[str, Any]]:
        """All-reduced metrics of epoch ``self.epoch``; raises StopRequested when rank 0 is asked to stop."""
        t0 = time.monotonic()
        cm, val_loss = evaluate_batches(
            unwrap(self.model), self.val_loader, num_classes=self.bundle.num_classes, weight=self.weight,
            ignore_index=self.bundle.ignore_index, device=self.info.device, streams=self.cfg.model.streams,
            amp=self.cfg.train.amp, should_stop=should_stop if self.info.is_main else None,
            check_every=self.cfg.train.log_every, poll=should_stop is not None,
        )
        if int(cm.sum()) == 0:
            raise InputError("data: the val split has no labelled pixel (all ignore_index); cannot validate")
        if not math.isfinite(val_loss):
            raise TrainingError(f"validation: non-finite loss in epoch {self.epoch}; stopped before checkpointing")
        m = metrics_from_confusion(cm)
        train_loss = self.loss_sum / max(1, self.step)
        metrics = {
            "epoch": float(self.epoch), "train_loss": train_loss, "val_loss": val_loss,
            "val_oa": float(m["oa"]), "val_miou": float(m["miou"]),  # type: ignore[arg-type]
            "lr": float(self.optimizer.param_groups[0]["lr"]),
        }
        record: dict[str, Any] = {
            **metrics, "epoch": self.epoch, "val_iou": m["iou"], "val_f1": m["f1"],
            "val_confusion_matrix": m["confusion_matrix"], "val_time_s": round(time.monotonic() - t0, 3),
        }
        return metrics, record


__all__ = ["EpochCallback", "FitResult", "fit"]
