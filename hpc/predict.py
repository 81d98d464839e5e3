"""Map a region on the cluster: ``python hpc/predict.py --model best_model.pth --tiles ROOT --out DIR --tasks 8``.

A submitit job array whose task ``i`` of ``n`` maps tiles ``i, i+n, ...`` of the list (no DDP: tiles
are independent). ``--gpus`` defaults to one GPU per task where the partition has GPUs (locally:
where this machine shows any), none elsewhere; ``--gpus N`` runs N processes per task, one per GPU,
each mapping every N-th of the task's tiles (the simple split: no process waits on another).
Before submitting it checks the model file, every tile (structure, bands, size against the model),
the output folder, the partition and (with ``sbatch --test-only``) the resources; bad input is one
``error:`` line, exit 2, nothing submitted. ``--dry-run`` prints the sbatch script and submits
nothing. Resumable: a tile whose ``<out>/<tile>.zarr`` exists (written atomically, last) is done;
tiles already mapped are not resubmitted, and a requeued task (time limit, preemption) skips what it already wrote.
Without SLURM (``--executor local``) the tasks run through submitit's local executor.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import submitit

from dualseg.errors import DualsegError, InputError, report_error
from hpc import slurm
from hpc.slurm import SlurmEnv
from hpc.submit import Backend, LocalBackend, Resources, SlurmBackend, array_id
from hpc.submit.local import visible_gpus

WHAT = "prediction array (--partition/--account/--qos/--time/--mem/--cpus-per-task/--gpus)"
MAX_REQUEUES = 20  # a requeued task skips the tiles it already wrote


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python hpc/predict.py", description=__doc__.split("\n")[0])
    a = p.add_argument
    a("--model", type=Path, nargs="+", required=True,
      help="best_model.pth (or a trial's best.pt); several, or a folder of them: an ensemble")
    a("--tiles", type=Path, required=True, help="tile root (<root>/<tile>.zarr)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--split", help="a split of <root>/splits.json (default: every tile under --tiles)")
    which.add_argument("--tile", action="append", default=[], help="a tile name (repeatable)")
    a("--out", type=Path, required=True, help="output folder (maps, and logs/ for the jobs)")
    a("--tasks", type=int, default=4, help="array size: the tile list is split across this many tasks")
    a("--parallel", type=int, help="array parallelism (default: all tasks)")
    a("--gpus", type=int, help="GPUs per task, one process each (default: 1 on a GPU partition, 0 without GPUs)")
    a("--cpus-per-task", type=int)
    a("--partition")
    a("--account")
    a("--qos")
    a("--time", default="60", help="time limit per task (SLURM syntax: MM, HH:MM:SS, D-HH:MM; default 60)")
    a("--mem", help="memory per task, e.g. 16G")
    a("--overlap", type=float, default=0.25, help="window overlap fraction in [0, 1)")
    a("--batch-size", type=int, default=8)
    a("--probabilities", action="store_true", help="also store every class probability")
    a("--executor", choices=["auto", "slurm", "local"], default="auto", help="auto: slurm when sinfo works")
    a("--dry-run", action="store_true", help="validate and print the sbatch script; submit nothing")
    return p


@dataclass
class PredictSpec:
    """What every task needs (pickled into the job; paths absolute). ``models``: one, or an ensemble."""

    models: list[str]
    root: str
    tiles: list[str]
    out: str
    tasks: int
    overlap: float = 0.25
    batch_size: int = 8
    probabilities: bool = False
    options: dict[str, Any] = field(default_factory=dict)
    ranks: int = 1  # processes per task, one per GPU (--gpus N > 1)


class PredictTask(submitit.helpers.Checkpointable):
    """Array task ``index``: maps its share of the tiles; requeued on timeout, it skips finished ones."""

    def __init__(self, spec: PredictSpec, index: int) -> None:
        self.spec, self.index = spec, index

    def __call__(self) -> list[str]:
        from dualseg.infer.members import load_members
        from dualseg.predict import predict_tiles
        from dualseg.train.device import visible_device_count

        s = self.spec
        rank, local = process_rank()
        mine = share(s.tiles, self.index, s.tasks, rank, s.ranks)
        device = task_device(local, visible_device_count(), s.ranks)
        env = SlurmEnv.read()
        print(f"task {self.index}/{s.tasks} process {rank}/{s.ranks} ({env.label}) on {env.nodename or 'localhost'}, "
              f"{device}: {len(mine)} tile(s)", flush=True)
        res = predict_tiles(load_members(s.models), s.root, mine, s.out, overlap=s.overlap,
                            batch_size=s.batch_size, device=device, probabilities=s.probabilities, progress=False)
        for r in res:
            print(f"mapped {r.tile} {r.status} {r.seconds:.1f}s -> {r.zarr}", flush=True)
        return [r.tile for r in res if r.status == "written"]


def share(tiles: list[str], index: int, tasks: int, rank: int = 0, ranks: int = 1) -> list[str]:
    """Tiles of process ``rank`` of array task ``index``: every ``tasks``-th tile, then every ``ranks``-th
    of those; over all tasks and processes each tile exactly once."""
    return tiles[index::tasks][rank::ranks]


def task_device(local_rank: int, visible: int, ranks: int) -> str:
    """``cpu``, or the CUDA device of this process: its own when each process sees one GPU, else the
    local rank's (:func:`dualseg.train.device.choose_device`, the rule training follows)."""
    from dualseg.train.device import choose_device

    choice = choose_device({"LOCAL_RANK": str(local_rank)}, visible, ranks, "auto")
    return "cpu" if choice.index is None else f"cuda:{choice.index}"


def process_rank() -> tuple[int, int]:
    """(rank within the task, local rank on its node) from submitit's job environment; (0, 0) outside a job."""
    try:
        env = submitit.JobEnvironment()
    except RuntimeError:  # not inside a submitit job (a direct call)
        return 0, 0
    return env.global_rank, env.local_rank


def default_gpus(executor: str, partition: str | None) -> int:
    """One GPU per task where there are GPUs: the partition's smallest node (``sinfo``) under SLURM,
    this machine's visible devices locally; 0 on CPU-only partitions and machines."""
    if executor == "slurm":
        return 1 if slurm.partition_resources(partition).gpus > 0 else 0
    return 1 if visible_gpus() else 0


def plan(a: argparse.Namespace) -> tuple[PredictSpec, list[str], str]:
    """Validate everything; returns (spec of the tiles still to map, tiles already mapped, executor)."""
    from dualseg.infer.members import load_members, model_paths
    from dualseg.predict import list_tiles
    from dualseg.predict.maps import open_inputs
    from dualseg.predict.outputs import check_out, pending

    for opt, v, low in (("--tasks", a.tasks, 1), ("--gpus", a.gpus, 0), ("--batch-size", a.batch_size, 1)):
        if v is not None and v < low:
            raise InputError(f"{opt}: must be >= {low} (got {v})")
    if a.parallel is not None and a.parallel < 1:
        raise InputError(f"--parallel: must be >= 1 (got {a.parallel})")
    if not 0.0 <= a.overlap < 1.0:
        raise InputError(f"--overlap must be in [0, 1), got {a.overlap}")
    slurm.time_to_minutes(a.time)
    paths = [p.expanduser().resolve() for p in model_paths(a.model)]
    models = load_members(paths)  # an ensemble's members agree (bands, classes, normalisation)
    names = list_tiles(a.tiles, a.split, a.tile)
    infos = open_inputs(models[0], a.tiles, names)  # every tile checked before anything is submitted
    out = Path(a.out)
    for p in paths:
        out = check_out(a.out, a.tiles, p)  # never an input; writable
    todo = [i.name for i in pending(out, infos)]  # only maps of ours count as done
    done = [n for n in names if n not in todo]
    executor = a.executor
    if executor == "auto":
        executor = "slurm" if slurm.available() else "local"
    if executor == "slurm":
        SlurmBackend().check_partition(a.partition)
    tasks = max(1, min(a.tasks, len(todo)))
    if a.gpus is None:
        a.gpus = default_gpus(executor, a.partition)
        if executor == "local" and a.gpus:  # local tasks run at once: one per visible GPU, never two on one
            tasks = min(tasks, len(visible_gpus()))
    spec = PredictSpec([str(p) for p in paths], str(a.tiles.expanduser().resolve()), todo, str(out),
                       tasks, a.overlap, a.batch_size, a.probabilities, ranks=max(1, a.gpus))
    return spec, done, executor


def resources(a: argparse.Namespace, spec: PredictSpec) -> Resources:
    """Every task: one node, ``--gpus`` GPUs and one process per GPU (one process on CPU), requeued on timeout."""
    return Resources(job_name="dualseg-predict", log_folder=Path(spec.out) / "logs",
                     time_min=slurm.time_to_minutes(a.time), gpus_per_node=a.gpus, tasks_per_node=spec.ranks,
                     cpus_per_task=a.cpus_per_task,
                     mem=a.mem, partition=a.partition, account=a.account, qos=a.qos, parallelism=a.parallel,
                     max_requeues=MAX_REQUEUES)


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    try:
        spec, done, executor = plan(a)
        n = len(spec.tiles)
        if not spec.tiles:
            print(f"all {len(done)} tile(s) already mapped in {spec.out}; nothing to submit")
            return 0
        head = (f"{n} tile(s) to map in {spec.tasks} task(s)" + (f" x {a.gpus} GPU(s)" if a.gpus else " on CPU")
                + (f", {len(done)} already mapped" if done else ""))
        res = resources(a, spec)
        backend: Backend = SlurmBackend() if executor == "slurm" else LocalBackend()
        what = WHAT if executor == "slurm" else "prediction array (--tasks x --gpus)"
        backend.check(spec.tasks, res, what)
        if a.dry_run:
            if isinstance(backend, SlurmBackend):
                print(f"# array of {spec.tasks} task(s): {head}; maps -> {spec.out}")
                print(backend.render(spec.tasks, res))
            else:
                print(f"# local executor: {head}; maps -> {spec.out}; nothing run")
            return 0
        jobs = backend.submit_array([PredictTask(spec, i) for i in range(spec.tasks)], res, what)
        if executor == "local":
            print(f"{sum(len(r) for j in jobs for r in j.results())} map(s) written -> {spec.out}")
            return 0
    except DualsegError as exc:
        return report_error(exc)
    print(f"submitted array {array_id(jobs)}: {head}")
    print(f"maps:  {spec.out}/<tile>.zarr (+ <tile>.tif for georeferenced tiles)")
    print(f"logs:  {Path(spec.out) / 'logs'}")
    print(f"follow: squeue -j {array_id(jobs)}; rerun the same command to resubmit only tiles not yet mapped")
    print(f"  {shlex.quote(sys.executable)} -m dualseg.predict --help  # the same on one machine")
    return 0


if __name__ == "__main__":  # re-import as hpc.predict: jobs unpickle hpc.predict.PredictTask, not __main__'s
    from hpc.predict import main as _main

    sys.exit(_main())
