"""What every rank of every array task runs: pull trials from the shared study until it is full.

The job's side of the search: start-up (distributed environment, the study, the requeue strategy) and
teardown around the loop of :mod:`hpc.runner`. Two ways in: :class:`Worker`, the callable submitit
pickles, and ``python -m hpc.worker``, the same loop without submitit pickles (``sbatch/train.sbatch``,
the pickle-free path: its spec comes from what ``launch.py --prepare-only`` recorded in the study).
The counting rules live in :mod:`hpc.trials`, signals in :mod:`hpc.signals`, requeueing in
:mod:`hpc.requeue`.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dualseg.config import Config, from_dict, to_dict
from dualseg.errors import DualsegError, InputError, report_error
from hpc.config import parse_hpc
from hpc.paths import check_study_dir, log_dir, resolve_scratch
from hpc.requeue import NoRequeue, RequeueStrategy, ScontrolRequeue, SubmititRequeue
from hpc.runner import TrialRunner, broadcast
from hpc.signals import SIGNALS
from hpc.slurm import SlurmEnv
from hpc.storage import StorageURL
from hpc.study import StudyRecord, open_study
from hpc.trials import Assignment, Coordinator, WorkerSpec

log = logging.getLogger("hpc.worker")


class Worker:
    """The callable submitit pickles once per array task and runs on every rank.

    :meth:`checkpoint` is submitit's requeue protocol: the returned clone (pickled for the requeued
    job) remembers the running trial, so the requeued job continues it from ``last.pt``.
    """

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.resume_trial_id: int | None = None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        import submitit

        log.warning("requeueing; the requeued job continues the same trial (storage id %s)", self.resume_trial_id)
        clone = Worker(self.spec)
        clone.resume_trial_id = self.resume_trial_id
        return submitit.helpers.DelayedSubmission(clone)

    def __call__(self) -> dict[str, int]:
        import submitit

        submitit_usr2 = signal.getsignal(signal.SIGUSR2)
        SIGNALS.install()  # first: a signal during start-up is honoured, not lost
        # all GPUs of the node stay visible: the trainer selects cuda:LOCAL_RANK itself
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        try:
            return run_worker(self.spec, SubmititRequeue(submitit_usr2, self))
        finally:
            SIGNALS.restore()


def run_worker(spec: WorkerSpec, requeue: RequeueStrategy | None = None) -> dict[str, int]:
    """The loop on every rank. Returns counts of what this job did (rank 0's view)."""
    from dualseg.train import init_distributed
    from dualseg.train.distributed import cleanup
    from dualseg.train.log import set_log_context, setup_logging

    setup_logging(stream=sys.stdout)  # <job>_<rank>_log.out: the log; .err: warnings, tracebacks, bars
    slurm = SlurmEnv.read()
    set_log_context(node=slurm.nodename or socket.gethostname().split(".")[0])
    cfg = from_dict(Config, spec.config)
    hpc = parse_hpc(cfg, spec.hpc_overrides)
    # kept for the whole loop (fit reuses it); a collective waits at most hpc.collective_timeout_s
    info = init_distributed(cfg.train.device, hpc.collective_timeout_s,
                            trace_dir=log_dir(Path(spec.scratch) / spec.study) / "nccl")
    coord: Coordinator | None = None
    started = time.monotonic()
    runner: TrialRunner | None = None
    try:
        if info.rank == 0:
            try:
                check_study_dir(Path(spec.scratch) / spec.study, spec.incarnation, spec.study)
                coord = Coordinator(spec, hpc)
            except BaseException:
                broadcast(Assignment("stop", reason="rank 0 could not open the study"), info.world_size)
                raise
        runner = TrialRunner(spec, cfg, hpc, info, coord, requeue or NoRequeue())
        runner.run()
    finally:
        if coord is not None:
            try:
                coord.record_allocation((time.monotonic() - started) * info.world_size)
            except Exception as exc:  # noqa: BLE001 - bookkeeping must not mask the real exit reason
                log.warning("allocation not recorded: %s", type(exc).__name__)
            coord.db.close()
        cleanup(info)  # every exit path: a process group left behind aborts the process at exit
    return runner.done if runner is not None else {}


# --- python -m hpc.worker: the same loop under plain srun (sites that forbid pickles) ---------


def main(argv: list[str] | None = None) -> int:
    from dualseg.config import load_config
    from dualseg.train.log import setup_logging

    SIGNALS.install()
    setup_logging(stream=sys.stdout)
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python -m hpc.worker", description=__doc__.split("\n")[0])
    p.add_argument("--config", default=os.environ.get("DUALSEG_CONFIG") or None,
                   help="only for a study without a recorded config: a study prepared by `launch.py --prepare-only` "
                   "trains on the config recorded in it (--set overrides included), and --config is refused")
    p.add_argument("--study", default=os.environ.get("DUALSEG_STUDY"), help="study name (default $DUALSEG_STUDY)")
    p.add_argument("--storage", default=None, help="study database URL (default $DUALSEG_STORAGE)")
    p.add_argument("--scratch", default=None, help="default: the one recorded in the study by the launcher")
    p.add_argument("--trials", type=int, default=None, help="default: the target recorded in the study")
    p.add_argument("--db-outage-s", type=float, default=300.0,
                   help="how long to wait for an unreachable database at start (then hpc.db_outage_s)")
    a = p.parse_args(argv)
    slurm = SlurmEnv.read()
    try:
        if not a.study:
            raise InputError("--study: not given and $DUALSEG_STUDY is not set")
        from hpc.storage import resolve_storage

        url = resolve_storage(a.storage, None, None)
        if url is None:
            raise InputError("--storage: not given and $DUALSEG_STORAGE is not set")
        record = StudyRecord()
        if slurm.procid == 0:  # only rank 0 ever connects
            with open_study(url, a.study, budget_s=a.db_outage_s) as opened:
                record = opened.record  # created by `launch.py --prepare-only`
        if slurm.nodelist and slurm.job_id:
            os.environ.update(slurm.torch_env())
        spec = _plain_spec(a, record, url, load_config)
        if slurm.procid != 0:
            spec.config = {}  # filled by rank 0's broadcast below
        run_worker(_share_spec(spec), ScontrolRequeue(Path(spec.scratch) / spec.study / "jobs", slurm))
    except DualsegError as exc:
        return report_error(exc, url.scrub if "url" in locals() and url is not None else None)
    finally:
        from dualseg.train.distributed import cleanup

        cleanup()  # _share_spec made the process group (run_worker only reused it): destroy it on every path
        SIGNALS.restore()
    return 0


def _plain_spec(a: argparse.Namespace, record: StudyRecord, url: StorageURL,
                load_config: Callable[[str], Config]) -> WorkerSpec:
    if record.config is None and not a.config:
        return WorkerSpec({}, url.public, a.study, "")
    if record.config is not None and a.config:  # the study's config is the config: no silent second one
        raise InputError(f"--config: study {a.study!r} records the configuration it was prepared with (--set "
                         "overrides included); its workers train on that — drop --config / $DUALSEG_CONFIG")
    cfg = load_config(a.config) if a.config else from_dict(Config, record.config or {})
    hpc = parse_hpc(cfg, {"study": a.study, "scratch": a.scratch})
    scratch = a.scratch or record.scratch or str(resolve_scratch(hpc.scratch, cfg.train.scratch))
    trials = a.trials or record.trials or hpc.trials
    return WorkerSpec(to_dict(cfg), url.public, a.study, str(Path(scratch).resolve()),
                      {"study": a.study, "trials": int(trials)}, record.incarnation)


def _share_spec(spec: WorkerSpec) -> WorkerSpec:
    """Rank 0 read the study; every other rank gets its spec over the process group (no DB connection)."""
    import torch.distributed as dist

    from dualseg.train import init_distributed

    cfg_device = spec.config.get("train", {}).get("device", "auto") if spec.config else "auto"
    # the other ranks learn the config only through this group: its timeout comes from the job's environment
    info = init_distributed(os.environ.get("DUALSEG_DEVICE", cfg_device),
                            float(os.environ.get("DUALSEG_COLLECTIVE_TIMEOUT_S", "1800")))
    if info.world_size > 1:
        box = [spec]
        dist.broadcast_object_list(box, src=0)
        spec = box[0]
    if not spec.config:
        raise InputError(f"--config: not given and study {spec.study!r} has no recorded config")
    return spec


if __name__ == "__main__":
    sys.exit(main())
