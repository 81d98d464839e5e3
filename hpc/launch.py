"""Launch a distributed hyperparameter search: ``python hpc/launch.py --nodes 2 --trials 50``.

On a login node this validates everything it can (config, search space, partition, the worker array
*and* the evaluation job through ``sbatch --test-only``, scratch, database credentials) *before*
submitting anything, creates or resumes the study once (the only place the schema is created),
submits a submitit job array of multi-node DDP workers and an evaluation job that runs ``afterany``
the array, prints how to follow progress and exits. Run again with the same ``--study`` it adds
workers for what is left. Without SLURM (``--executor local``, automatic on a laptop) it runs the same
workers through submitit's local executor on a SQLite study, prints a line per finished trial, then
evaluates and prints the result; Ctrl-C stops the workers, hands their trials back and exits 130.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from dualseg.config import Config, load_config
from dualseg.data.preflight import check_dataset
from dualseg.errors import DualsegError, InputError, report_error
from dualseg.io import check_writable_dir
from hpc import follow, slurm
from hpc.config import FINAL_SUFFIX, HpcConfig, parse_hpc
from hpc.final_plan import check_final
from hpc.options import add_flags, flag_values
from hpc.paths import REPO_ROOT, resolve_scratch
from hpc.prepare import prepare, record_submission
from hpc.storage import (
    StorageURL,
    check_server,
    resolve_storage,
)
from hpc.submit import SlurmBackend, jobs
from hpc.submit.jobs import Plan
from hpc.submit.resources import eval_job_name

DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
INTERRUPTED = 130  # exit status after Ctrl-C (128 + SIGINT), as a shell reports it


def build_parser() -> argparse.ArgumentParser:
    """The launcher's own options, then one per :func:`hpc.options.flag` field of :class:`HpcConfig`."""
    p = argparse.ArgumentParser(
        allow_abbrev=False,
        prog="python hpc/launch.py",
        description="Distributed Optuna search of dualseg models on SLURM (or locally).",
        epilog="The grouped options (and --no-eval: eval: false) can also be set in the config's hpc: section; "
               "the command line wins. Installed, `dualseg-launch` is the same command.",
    )
    a = p.add_argument
    a("--config", help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    a("--set", action="append", default=[], metavar="KEY=VALUE",
      help="override a config value, e.g. train.epochs=5 (YAML value syntax)")
    a("--dry-run", action="store_true", help="print every sbatch script that would be submitted; submit nothing")
    a("--no-eval", action="store_true", help="do not submit the evaluation job (hpc.eval: false)")
    a("--allow-change", action="store_true", help="let a relaunch change --trials, the objective or the search space "
      "of an existing study (or extend a complete one)")
    a("--prepare-only", action="store_true", help="validate, generate data, create/resume the study; submit nothing "
      "(then submit sbatch/train.sbatch yourself)")
    add_flags(p, HpcConfig)
    return p


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set: expected KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise InputError(f"--set: {item}: not a YAML value ({str(exc).splitlines()[0]})") from None
    return out


def _load(args: argparse.Namespace) -> Config:
    cfg_path = Path(args.config) if args.config else DEFAULT_CONFIG
    if not cfg_path.is_file():
        raise InputError(f"--config: file not found: {cfg_path}")
    sets = _parse_set(args.set)
    hpc_sets = {k: sets.pop(k) for k in list(sets) if k.startswith("hpc.")}
    cfg = load_config(cfg_path, sets)
    for dotted, value in hpc_sets.items():  # hpc.* may name keys the file omits: parse_hpc checks them
        node = cfg.hpc
        *parents, leaf = dotted.split(".")[1:]
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InputError(f"--set: {dotted}: {part} is not a section")
        node[leaf] = value
    return cfg


def make_plan(args: argparse.Namespace) -> Plan:
    cfg = _load(args)
    overrides = flag_values(args, HpcConfig)
    del overrides["storage"]  # resolved below, with the config's and $DUALSEG_STORAGE, into a StorageURL
    if args.no_eval:
        overrides["eval"] = False
    configured_storage = cfg.hpc.get("storage")
    cfg.hpc = {k: v for k, v in cfg.hpc.items() if k != "storage"}  # parsed once, below, as a StorageURL
    hpc = parse_hpc(cfg, overrides)
    if hpc.study.endswith(FINAL_SUFFIX):
        raise InputError(f"--study: {hpc.study!r}: names ending in {FINAL_SUFFIX} are the final runs' studies "
                         "(hpc.final); launch the search itself")
    executor = hpc.executor
    if executor == "auto":
        executor = "slurm" if slurm.available() else "local"
    if executor == "slurm":
        SlurmBackend().check_partition(hpc.partition)
    if executor == "local" and hpc.nodes > 1:
        raise InputError(f"--nodes: the local executor runs on one machine (got {hpc.nodes}); use --executor slurm")
    scratch = resolve_scratch(hpc.scratch, cfg.train.scratch)
    check_writable_dir(scratch, "--scratch")  # one error line, before any side effect
    local_db = scratch / hpc.study / "study.db" if executor == "local" else None
    storage = resolve_storage(args.storage, configured_storage, local_db)
    if storage is None:
        raise InputError("--storage: a SLURM search needs a shared database: pass --storage postgresql://user@host/db "
                         "or set $DUALSEG_STORAGE (password in ~/.pgpass or $PGPASSWORD)")
    if executor == "slurm" and storage.is_sqlite:
        raise InputError("--storage: SQLite cannot be shared by jobs on several nodes; use postgresql://")
    data_root = Path(cfg.data.root)  # absolute paths: jobs may start in another directory
    if not data_root.is_absolute():
        cfg.data.root = str((Path.cwd() / data_root).resolve())
    check_final(cfg, hpc.final)  # folds: all on a dataset without folds, before anything exists
    cfg.train.scratch = str(scratch)
    if hasattr(cfg.train, "monitor"):
        cfg.train.monitor = hpc.objective  # best.pt is chosen on what the study optimises
    if configured_storage or args.storage:
        cfg.hpc["storage"] = storage.public  # the config travels into pickles and results: never a password
    plan = Plan(cfg, hpc, executor, scratch, storage, allow_change=args.allow_change)
    if executor == "slurm":
        jobs.fit_cpus(plan, jobs.partition_node(plan))
    return plan


def submit_slurm(plan: Plan) -> tuple[str, str | None]:
    res = jobs.check_scripts(plan)  # both scripts judged by SLURM before anything exists
    prepare(plan)
    jobs.scrub_environment(plan)
    array_id = jobs.submit_array(plan, plan.hpc.workers)
    record_submission(plan, array_id)
    eval_id = None
    waiting = slurm.squeue_listing([eval_job_name(plan.hpc.study)], 0) if plan.hpc.eval else None
    if waiting:  # a relaunch of a running study: its evaluation job heals, then follows the new workers too
        print(f"evaluation job {next(iter(waiting))} of study {plan.hpc.study!r} is already queued; "
              "it follows the new workers", flush=True)
    elif plan.hpc.eval:
        try:
            eval_id = jobs.submit_eval(plan, array_id, res)
        except InputError as exc:
            slurm.cancel(array_id)
            raise InputError(f"{exc} (array {array_id} cancelled)") from None
    return array_id, eval_id


def run_local(plan: Plan) -> int:
    """The embedded default: local executor, SQLite study, a line per finished trial, then evaluate."""
    from hpc.evaluate import evaluate_study
    from hpc.progress import Interrupted, follow_local, stop_local

    prepare(plan)
    workers = jobs.run_local_workers(plan)
    try:
        print(f"local workers: {', '.join(j.job_id for j in workers)}; logs in {plan.logdir}", flush=True)
        failures = follow_local(plan, workers)
        if plan.hpc.eval and plan.hpc.final.on and not failures:
            from hpc.final import run_final_local

            failures = run_final_local(plan.storage, plan.hpc.study, plan.scratch)
    except KeyboardInterrupt as exc:  # the workers ignore Ctrl-C: stop them, hand their trials back, one line
        final = exc if isinstance(exc, Interrupted) else None  # the final runs' stage stopped its own workers
        numbers = final.handed if final is not None else stop_local(plan, workers)
        listed = f"trial{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))}"
        held = ("no trial was running" if not numbers else f"final {listed} of study {final.study} handed back"
                if final is not None else f"{listed} handed back")
        print(f"interrupted: {held}; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if plan.hpc.eval:
        results = evaluate_study(plan.storage, plan.hpc.study, plan.scratch)
        r = results["test"]
        print(f"best trial {results['best_trial']['number']}: test OA {r['oa']:.3f} mIoU {r['miou']:.3f}; "
              f"results in {results['results_dir']}/results.json")
        if results.get("report"):
            print(f"report: {results['report']}")
        print(f"maps:   {follow.map_command(plan, results['results_dir'])}")
    print(f"status: {follow.status_command(plan)}")
    print(f"report: {follow.report_command(plan)}")
    return 1 if failures else 0


def _dry_run(plan: Plan) -> int:
    check_server(plan.storage, plan.hpc.workers)  # the real launch would fail there: wrong database, host, port
    check_dataset(plan.cfg.data, missing_ok=True)
    masked = plan.storage.masked
    if plan.executor == "local":
        print(f"# local executor: {plan.hpc.workers} worker(s), storage {masked}, logs {plan.logdir}; "
              "nothing submitted")
        return 0
    res = jobs.check_scripts(plan) if slurm.available() else jobs.eval_resources(plan, None)
    print(f"# array of {plan.hpc.workers} job(s), {plan.hpc.nodes} node(s) each; storage {masked}")
    print(jobs.array_script(plan))
    if plan.hpc.eval:
        print("# evaluation job (submitted with the array id as dependency)")
        print(jobs.eval_script(plan, "<ARRAY_ID>", res))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    storage: StorageURL | None = None
    try:
        plan = make_plan(args)
        storage = plan.storage
        if args.dry_run:
            return _dry_run(plan)
        if args.prepare_only:
            prepare(plan)
            print(f"study {plan.hpc.study!r} ready in {plan.storage.masked}; scratch {plan.scratch}")
            if plan.executor == "slurm":
                print(f"submit its workers (sbatch/train.sbatch, no pickles):\n  {follow.pickle_free_command(plan)}")
            return 0
        if plan.executor == "local":
            return run_local(plan)
        array_id, eval_id = submit_slurm(plan)
    except KeyboardInterrupt:  # before the workers ran, or while evaluating: nothing half-written to hand back
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        return INTERRUPTED
    except DualsegError as exc:
        def scrub(m: str) -> str:
            m = storage.scrub(m) if storage is not None else m
            for raw in (args.storage, os.environ.get("DUALSEG_STORAGE")):
                try:
                    m = StorageURL.parse(raw).scrub(m) if raw else m
                except InputError:
                    pass
            return m

        return report_error(exc, scrub)
    _print_submitted(plan, array_id, eval_id)
    return 0


def _print_submitted(plan: Plan, array_id: str, eval_id: str | None) -> None:
    h = plan.hpc
    print(f"submitted array {array_id} ({h.workers} task(s) x {h.nodes} node(s)), study {h.study!r} "
          f"-> {h.trials} trials")
    if eval_id:
        print(f"evaluation job {eval_id} (afterany:{array_id}) -> {plan.study_dir / 'results' / 'results.json'}")
    print(f"storage: {plan.storage.masked}")
    print(f"logs:    {plan.logdir}")
    for line in follow.submitted_lines(plan, array_id, eval_id):
        print(line)

if __name__ == "__main__":
    sys.exit(main())
