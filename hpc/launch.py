"""Launch a distributed hyperparameter search: ``python hpc/launch.py --nodes 2 --trials 50``.

On a login node this validates everything it can (config, search space, partition, database
credentials) *before* submitting anything, creates or resumes the study once (the only place the
schema is created), submits a submitit job array of multi-node DDP workers and an evaluation job
that runs ``afterany`` the array (one failed task must not block it), prints how to follow
progress and exits. Without SLURM (``--executor local``, automatic on a laptop) it runs the same
workers through submitit's local executor on a SQLite study with generated data, waits, evaluates
and prints the result.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make the repo root importable, not hpc/ itself
    _here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _here]
    sys.path.insert(0, str(_here.parent))

from dualseg.config import Config, load_config, to_dict  # noqa: E402
from dualseg.data.preflight import check_dataset  # noqa: E402  [data pre-flight]
from dualseg.errors import DualsegError, InputError, report_error  # noqa: E402
from dualseg.io import check_writable_dir  # noqa: E402  [data pre-flight]
from hpc import study as st  # noqa: E402
from hpc.config import HpcConfig, parse_hpc, time_to_minutes  # noqa: E402
from hpc.helpers import REPO_ROOT, code_version, resolve_scratch  # noqa: E402
from hpc.worker import Worker, WorkerSpec  # noqa: E402

DEFAULT_CONFIG = REPO_ROOT / "configs" / "default.yaml"
EVAL_TEMPLATE = REPO_ROOT / "sbatch" / "eval.sbatch"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python hpc/launch.py",
        description="Distributed Optuna search of dualseg models on SLURM (or locally).",
        epilog="Every option can also be set in the config's hpc: section; the command line wins.",
    )
    a = p.add_argument
    a("--config", help=f"YAML config (default: {DEFAULT_CONFIG.relative_to(REPO_ROOT)})")
    a("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5 (YAML value syntax)")
    a("--nodes", type=int, help="nodes per trial (multi-node DDP)")
    a("--gpus-per-node", type=int, help="GPUs per node = tasks per node (0: one CPU task per node)")
    a("--trials", type=int, help="finished (complete + pruned) trials the study must reach")
    a("--workers", type=int, help="array size: jobs pulling trials concurrently")
    a("--parallel", type=int, help="array parallelism (max array tasks running at once)")
    a("--partition")
    a("--account")
    a("--qos")
    a("--time", help="time limit per array task (SLURM syntax: MM, HH:MM:SS, D-HH:MM)")
    a("--mem", help="memory per node, e.g. 32G")
    a("--cpus-per-task", type=int)
    a("--storage", help="SQLAlchemy URL of the study database (default: hpc.storage, $DUALSEG_STORAGE; local: SQLite)")
    a("--study", help="study name")
    a("--scratch", help="checkpoints/logs/results root (default: train.scratch, $SCRATCH, ./runs)")
    a("--executor", choices=["auto", "slurm", "local"], help="auto: slurm when sinfo works, else local")
    a("--dry-run", action="store_true", help="print every sbatch script that would be submitted; submit nothing")
    a("--no-eval", action="store_true", help="do not submit the evaluation job")
    a("--prepare-only", action="store_true", help="validate, generate data, create/resume the study; submit nothing "
      "(then submit sbatch/train.sbatch yourself)")
    return p


@dataclass
class Plan:
    """Everything resolved from config + command line, before any side effect."""

    cfg: Config
    hpc: HpcConfig
    executor: str
    scratch: Path
    study_dir: Path
    logdir: Path
    storage: str  # full URL, may hold the password: never printed, never written
    public_storage: str  # without password: what jobs and printed commands get


def _parse_set(items: list[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InputError(f"--set: expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def slurm_available() -> bool:
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return False
    try:
        return subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def slurm_partitions() -> list[str]:
    out = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise InputError(f"--executor slurm: sinfo failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else 'no output'}")
    return [p.strip().rstrip("*") for p in out.stdout.split() if p.strip()]


def make_plan(args: argparse.Namespace) -> Plan:
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
    overrides = {
        "nodes": args.nodes, "gpus_per_node": args.gpus_per_node, "trials": args.trials, "workers": args.workers,
        "parallel": args.parallel, "partition": args.partition, "account": args.account, "qos": args.qos,
        "time": args.time, "mem": args.mem, "cpus_per_task": args.cpus_per_task, "storage": args.storage,
        "study": args.study, "scratch": args.scratch, "executor": args.executor,
    }
    if args.no_eval:
        overrides["eval"] = False
    hpc = parse_hpc(cfg, overrides)
    executor = hpc.executor
    if executor == "auto":
        executor = "slurm" if slurm_available() else "local"
    if executor == "slurm" and hpc.partition is not None and slurm_available():
        have = slurm_partitions()
        if hpc.partition not in have:
            raise InputError(f"--partition: unknown partition {hpc.partition!r} (have: {', '.join(have)})")
    if executor == "local" and hpc.nodes > 1:
        raise InputError(f"--nodes: the local executor runs on one machine (got {hpc.nodes}); use --executor slurm")
    scratch = resolve_scratch(hpc.scratch, cfg.train.scratch)
    check_writable_dir(scratch, "--scratch")  # [data pre-flight] one error line, before any side effect
    study_dir = scratch / hpc.study
    storage = hpc.storage or os.environ.get(st.STORAGE_ENV)
    if not storage:
        if executor == "slurm":
            raise InputError("--storage: a SLURM search needs a shared database: pass --storage postgresql://user@host/db "
                             f"or set ${st.STORAGE_ENV} (password in ~/.pgpass or $PGPASSWORD)")
        storage = f"sqlite:///{study_dir / 'study.db'}"
    storage = st.normalize_url(storage)
    public, _ = st.split_password(storage)
    if executor == "slurm" and st.parse_url(storage).get_backend_name() == "sqlite":
        raise InputError("--storage: SQLite cannot be shared by jobs on several nodes; use postgresql://")
    # absolute paths: jobs may start in another directory
    data_root = Path(cfg.data.root)
    if not data_root.is_absolute():
        cfg.data.root = str((Path.cwd() / data_root).resolve())
    cfg.train.scratch = str(scratch)
    # the config travels into pickles, the study and results.json: never with a password inside
    cfg.hpc = {k: v for k, v in cfg.hpc.items() if k != "storage"}
    if hpc.storage:
        cfg.hpc["storage"] = public
    return Plan(cfg, hpc, executor, scratch, study_dir, study_dir / "logs", storage, public)


def _worker_spec(plan: Plan) -> WorkerSpec:
    h = plan.hpc
    overrides = {"trials": h.trials, "study": h.study, "gpus_per_node": h.gpus_per_node, "scratch": str(plan.scratch)}
    return WorkerSpec(to_dict(plan.cfg), plan.public_storage, h.study, str(plan.scratch), overrides)


def slurm_executor(plan: Plan) -> Any:
    import submitit

    h = plan.hpc
    ex = submitit.SlurmExecutor(folder=plan.logdir, max_num_timeout=100)
    params: dict[str, Any] = {
        "job_name": f"dualseg-{h.study}",
        "nodes": h.nodes,
        "ntasks_per_node": max(1, h.gpus_per_node),
        "time": time_to_minutes(h.time),
        "signal_delay_s": h.signal_delay_s,
        "array_parallelism": h.parallel or h.workers,
        "additional_parameters": {"requeue": True},
        "srun_args": ["--kill-on-bad-exit=1"],  # one dead rank ends the step: no rank hangs in a collective
    }
    if h.gpus_per_node:
        params["gpus_per_node"] = h.gpus_per_node
    for key in ("partition", "account", "qos", "mem", "cpus_per_task"):
        if getattr(h, key) is not None:
            params[key] = getattr(h, key)
    if h.setup:
        params["setup"] = list(h.setup)
    ex.update_parameters(**params)
    return ex


def array_script(plan: Plan) -> str:
    """The sbatch script submitit will submit for the array (for --dry-run)."""
    from submitit.slurm.slurm import _make_sbatch_string

    ex = slurm_executor(plan)
    extra = {"map_count": plan.hpc.workers} if plan.hpc.workers > 1 else {}
    return _make_sbatch_string(command=ex._submitit_command_str, folder=ex.folder, **ex.parameters, **extra)


def eval_script(plan: Plan, dependency: str | None) -> str:
    """Render sbatch/eval.sbatch: our #SBATCH lines replace the template's, settings exported at the marker."""
    h = plan.hpc
    sbatch = {"job-name": f"dualseg-eval-{h.study}", "time": str(time_to_minutes(h.eval_time)),
              "output": str(plan.logdir / "%j_0_log.out"), "error": str(plan.logdir / "%j_0_log.err")}
    for key in ("partition", "account", "qos", "mem"):
        if getattr(h, key) is not None:
            sbatch[key] = str(getattr(h, key))
    if h.cpus_per_task:
        sbatch["cpus-per-task"] = str(h.cpus_per_task)
    if h.gpus_per_node:
        sbatch["gpus-per-node"] = "1"
    if dependency:
        sbatch["dependency"] = f"afterany:{dependency}"
    lines = EVAL_TEMPLATE.read_text().splitlines()
    out: list[str] = []
    for line in lines:
        m = re.match(r"#SBATCH\s+--([\w-]+)", line)
        if m and m.group(1) in sbatch:
            continue
        out.append(line)
        if line.startswith("#!"):
            out += [f"#SBATCH --{k}={v}" for k, v in sbatch.items()]
        if line.strip() == "# dualseg: launcher settings":
            env = {"DUALSEG_STUDY": h.study, "DUALSEG_STORAGE_URL": plan.public_storage,
                   "DUALSEG_SCRATCH": str(plan.scratch), "DUALSEG_REPO": str(REPO_ROOT), "DUALSEG_PYTHON": sys.executable}
            out += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
            out += list(h.setup)
    return "\n".join(out) + "\n"


def prepare(plan: Plan) -> None:
    """Side effects every launch needs before submitting: data present, study created once.

    The database is checked first, so a wrong password or an unreachable host leaves nothing behind.
    """
    check_dataset(plan.cfg.data, missing_ok=True)  # [data pre-flight] existing data: before the database
    url = st.parse_url(plan.storage)
    if url.get_backend_name() == "sqlite" and url.database:
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    storage = st.open_storage(plan.storage, create_tables=True, pool_size=2)
    try:
        ensure_data(plan.cfg)
        check_dataset(plan.cfg.data)  # [data pre-flight] every split, every tile (generated data too)
        attrs = {"config": to_dict(plan.cfg), "trials": plan.hpc.trials, "scratch": str(plan.scratch),
                 "objective": plan.hpc.objective, "code_version": code_version()}
        st.create_or_load_study(storage, plan.hpc.study, st.direction_for(plan.hpc.objective), attrs)
    finally:
        storage.engine.dispose()
    plan.logdir.mkdir(parents=True, exist_ok=True)


def ensure_data(cfg: Config) -> None:
    """Generate the synthetic tiles once here, so N ranks of N jobs never race to write them."""
    root = Path(cfg.data.root)
    splits = Path(cfg.data.splits) if cfg.data.splits else root / "splits.json"
    if splits.exists() or cfg.data.train_tiles:
        return
    if cfg.data.synthetic is None:
        raise InputError(f"data.root: no tiles at {root} (no {splits.name}) and data.synthetic is not set")
    from dualseg.data.synthetic import ensure_synthetic

    print(f"generating synthetic data in {root} ...", flush=True)
    ensure_synthetic(root, cfg.data.synthetic)


def _export_password(plan: Plan) -> None:
    """Jobs inherit the submitting environment: the password travels there, not in a script."""
    _, password = st.split_password(plan.storage)
    if password:
        os.environ[st.PASSWORD_ENV] = password


def check_with_sbatch(plan: Plan) -> None:
    """``sbatch --test-only`` the array script: SLURM itself rejects a bad account, QOS, time or node
    count before the study is created or anything is submitted."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".sbatch", prefix="dualseg-check-") as fh:
        fh.write(array_script(plan))
        fh.flush()
        out = subprocess.run(["sbatch", "--test-only", fh.name], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        reason = _last_line(out.stderr).removeprefix("sbatch: error: ")
        raise InputError(f"sbatch refuses these resources (--nodes/--partition/--account/--qos/--time/--mem): {reason}")


def submit_slurm(plan: Plan) -> tuple[str, str | None]:
    import submitit

    check_with_sbatch(plan)
    prepare(plan)
    _export_password(plan)
    ex = slurm_executor(plan)
    spec = _worker_spec(plan)
    try:
        jobs = ex.submit_array([Worker(spec) for _ in range(plan.hpc.workers)])
    except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as exc:
        raise InputError(f"sbatch refused the array: {_last_line(str(exc))}") from None
    array_id = str(jobs[0].job_id).split("_")[0]
    eval_id = None
    if plan.hpc.eval:
        script = plan.logdir / f"eval-{array_id}.sbatch"
        from dualseg.io import atomic_write_text

        atomic_write_text(script, eval_script(plan, array_id))
        out = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, cwd=REPO_ROOT)
        if out.returncode != 0:
            subprocess.run(["scancel", array_id], capture_output=True)
            raise InputError(f"sbatch refused the evaluation job (array {array_id} cancelled): {_last_line(out.stderr)}")
        eval_id = out.stdout.strip().split(";")[0]
    return array_id, eval_id


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "no message"


def run_local(plan: Plan) -> dict[str, Any] | None:
    """The embedded default: submitit's local executor, a SQLite study, wait, evaluate, print."""
    import submitit

    from hpc.evaluate import evaluate_study

    prepare(plan)
    ex = submitit.LocalExecutor(folder=plan.logdir)
    ex.update_parameters(timeout_min=time_to_minutes(plan.hpc.time), tasks_per_node=max(1, plan.hpc.gpus_per_node),
                         gpus_per_node=plan.hpc.gpus_per_node)
    jobs = ex.submit_array([Worker(_worker_spec(plan)) for _ in range(plan.hpc.workers)])
    print(f"local jobs: {', '.join(j.job_id for j in jobs)}; logs in {plan.logdir}", flush=True)
    failures = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # noqa: BLE001 - report every worker, then fail once
            failures.append(f"worker {job.job_id}: {_last_line(str(exc))}")
    if failures:
        print("\n".join(failures), file=sys.stderr)
    if not plan.hpc.eval:
        return None
    return evaluate_study(plan.public_storage, plan.hpc.study, plan.scratch)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args)
        masked = st.mask_url(plan.storage)
        if args.dry_run:
            check_dataset(plan.cfg.data, missing_ok=True)  # [data pre-flight] also for a dry run
            if plan.executor == "local":
                print(f"# local executor: {plan.hpc.workers} worker(s), storage {masked}, logs {plan.logdir}; nothing submitted")
                return 0
            if slurm_available():
                check_with_sbatch(plan)  # sbatch --test-only: validated by SLURM, still nothing submitted
            print(f"# array of {plan.hpc.workers} job(s), {plan.hpc.nodes} node(s) each; storage {masked}")
            print(array_script(plan))
            if plan.hpc.eval:
                print("# evaluation job (submitted with the array id as dependency)")
                print(eval_script(plan, "<ARRAY_ID>"))
            return 0
        if args.prepare_only:
            prepare(plan)
            print(f"study {plan.hpc.study!r} ready in {masked}; scratch {plan.scratch}")
            return 0
        if plan.executor == "local":
            results = run_local(plan)
            if results is not None:
                r = results["test"]
                print(f"best trial {results['best_trial']['number']}: test OA {r['oa']:.3f} mIoU {r['miou']:.3f}; "
                      f"results in {results['results_dir']}/results.json")
            return 0
        array_id, eval_id = submit_slurm(plan)
    except DualsegError as exc:
        secrets = (st.parse_url_password(args.storage), st.parse_url_password(os.environ.get(st.STORAGE_ENV)),
                   os.environ.get(st.PASSWORD_ENV))
        return report_error(exc, lambda m: st.scrub(m, *secrets))
    h = plan.hpc
    print(f"submitted array {array_id} ({h.workers} task(s) x {h.nodes} node(s)), study {h.study!r} -> {h.trials} trials")
    if eval_id:
        print(f"evaluation job {eval_id} (afterany:{array_id}) -> {plan.study_dir / 'results' / 'results.json'}")
    print(f"storage: {masked}")
    print(f"logs:    {plan.logdir}")
    here = shlex.quote(sys.executable)
    print("follow:")
    first = f"{array_id}_0" if h.workers > 1 else array_id
    print(f"  {here} hpc/logs.py {first} --follow --logdir {plan.logdir}")
    print(f"  {here} hpc/status.py --study {h.study} --storage {shlex.quote(plan.public_storage)}")
    print(f"  optuna-dashboard {shlex.quote(plan.public_storage)}")
    print(f"  squeue -j {array_id}{',' + eval_id if eval_id else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
