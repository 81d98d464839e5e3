"""hpc.submit: the rendered scripts (golden), one renderer, real sbatch refusals, the local backend for real.

``tests/hpc/golden/*.sbatch`` were rendered by the code before ``hpc/submit/`` existed (``hpc/jobs.py``
and ``hpc/predict.py``); the volatile parts (the repository path, the Python executable) are
placeholders. A change of a rendered script, ours or submitit's, shows here as a diff.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import operator
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from dualseg.config import load_config
from dualseg.data.build import loader_workers
from dualseg.errors import InputError
from hpc import predict, slurm
from hpc.config import parse_hpc
from hpc.paths import REPO_ROOT
from hpc.storage import StorageURL
from hpc.submit import LocalBackend, Resources, SlurmBackend, array_id, backend, jobs
from hpc.submit.jobs import Plan
from hpc.submit.slurm import TASK_PYTHON, executor_parameters

GOLDEN = Path(__file__).parent / "golden"
PREDICT_ARGS = ["--tasks", "3", "--parallel", "2", "--gpus", "1", "--partition", "gpu", "--account", "acct",
                "--qos", "normal", "--time", "0:05:00", "--mem", "16G", "--cpus-per-task", "4"]


def _plan(sets: dict, **overrides: object) -> Plan:
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml")
    cfg.hpc.update(sets)
    h = parse_hpc(cfg, {"study": "golden", **overrides})
    return Plan(cfg, h, "slurm", Path("/scratch/me"), StorageURL.parse("postgresql://me@db.example/optuna"),
                "inc-0001", None)


def _big() -> Plan:
    big = _plan({"signal_delay_s": 45, "setup": ["module load cuda", "source /opt/env/bin/activate"]},
                nodes=2, gpus_per_node=4, workers=3, parallel=2, partition="gpu", account="acct", qos="normal",
                time="1:00:00", mem="32G", cpus_per_task=8, eval_mem="8G")
    big.passfile = big.study_dir / ".pgpass"
    return big


def _norm(text: str) -> str:
    return text.replace(shlex.quote(sys.executable), "<PYTHON>").replace(str(REPO_ROOT), "<REPO>")


def _predict(args: list[str], tasks: int) -> tuple[Resources, str]:
    """The map array's resources and script, as ``hpc/predict.py --dry-run`` builds them."""
    a = predict.build_parser().parse_args(["--model", "/scratch/me/best_model.pth", "--tiles", "/data/tiles",
                                           "--out", "/scratch/me/maps", *args])
    if a.gpus is None:  # what plan() resolves on a CPU-only partition
        a.gpus = 0
    spec = predict.PredictSpec([str(m) for m in a.model], str(a.tiles), [f"t{i}" for i in range(5)], str(a.out),
                               tasks, ranks=max(1, a.gpus))
    res = predict.resources(a, spec)
    return res, SlurmBackend().render(tasks, res)


def _rendered() -> dict[str, str]:
    big, small = _big(), _plan({})
    node = slurm.NodeResources(4, 64000, 2)
    return {
        "search-array.sbatch": jobs.array_script(big),
        "search-array-heal.sbatch": jobs.array_script(big, 2),
        "search-array-single.sbatch": jobs.array_script(small),
        "search-eval.sbatch": jobs.eval_script(big, "12345", jobs.eval_resources(big, node)),
        "search-eval-single.sbatch": jobs.eval_script(small, None, jobs.eval_resources(small, None)),
        "predict-array.sbatch": _predict(PREDICT_ARGS, 3)[1],
        "predict-array-single.sbatch": _predict(["--tasks", "1"], 1)[1],
    }


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.sbatch")))
def test_rendered_scripts_match_the_golden_files(name: str) -> None:
    assert _norm(_rendered()[name]) == (GOLDEN / name).read_text()


def test_visible_gpus_read_as_cuda_reads_them(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.submit.local import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpus() == [2, 3]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # set but empty: no GPU, not "all of them"
    assert visible_gpus() == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-8f2e1c3a-0000-1111-2222-333344445555")
    with pytest.raises(InputError, match="CUDA_VISIBLE_DEVICES=GPU-8f2e.*by index"):
        visible_gpus()


def test_tasks_start_python_with_usr2_ignored_until_a_handler_is_set() -> None:
    """What srun runs: a USR2 landing before submitit's handler is ignored instead of killing the task."""
    probe = ("import os, signal, sys; assert signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN; "
             "os.kill(os.getpid(), signal.SIGUSR2); signal.signal(signal.SIGUSR2, lambda *a: sys.exit(7)); "
             "os.kill(os.getpid(), signal.SIGUSR2)")
    done = subprocess.run(f"{TASK_PYTHON} -c {shlex.quote(probe)}", shell=True, timeout=60)
    assert done.returncode == 7  # the first USR2 ignored, the second reached the handler


def test_launch_and_predict_scripts_come_from_one_renderer() -> None:
    """The same options give the same Resources and the same script, whichever CLI asks."""
    pred, pred_script = _predict(PREDICT_ARGS, 3)
    plan = _plan({}, workers=3, parallel=2, gpus_per_node=1, partition="gpu", account="acct", qos="normal",
                 time="0:05:00", mem="16G", cpus_per_task=4)
    work = jobs.worker_resources(plan)
    assert jobs.array_script(plan) == SlurmBackend().render(3, work)
    # only what is the search's own differs: name, folder, srun's kill-on-bad-exit, signal delay, requeue budget
    own = {f: getattr(work, f) for f in ("job_name", "log_folder", "srun_args", "signal_delay_s", "max_requeues")}
    assert dataclasses.replace(pred, **own) == work
    assert SlurmBackend().render(3, dataclasses.replace(pred, **own)) == jobs.array_script(plan)

    def srun(script: str, folder: Path) -> str:
        (line,) = [ln for ln in script.splitlines() if ln.startswith("srun ")]
        return line.replace(str(folder), "<LOGS>").replace(" --kill-on-bad-exit=1", "")

    assert srun(pred_script, pred.log_folder) == srun(jobs.array_script(plan), work.log_folder)
    assert srun(pred_script, pred.log_folder) == (f"srun --unbuffered --output <LOGS>/%A_%a_%t_log.out --error "
                                                  "<LOGS>/%A_%a_%t_log.err --cpus-per-task=4 "
                                                  f"{TASK_PYTHON} -u -m "
                                                  "submitit.core._submit <LOGS>")


def test_submitit_private_renderer_is_used_in_one_place() -> None:
    """``_make_sbatch_string`` and the executors are built in hpc/submit only; SLURM_* is read in hpc/slurm.py."""
    uses: dict[str, set[str]] = {}
    for path in (REPO_ROOT / "hpc").rglob("*.py"):
        text = path.read_text()
        for needle in (r"_make_sbatch_string\(", r"SlurmExecutor\(", r"LocalExecutor\(", r"[\"']SLURMD?_"):
            if re.search(needle, text):
                uses.setdefault(needle, set()).add(str(path.relative_to(REPO_ROOT)))
    assert uses == {r"_make_sbatch_string\(": {"hpc/submit/slurm.py"}, r"SlurmExecutor\(": {"hpc/submit/slurm.py"},
                    r"LocalExecutor\(": {"hpc/submit/local.py"}, r"[\"']SLURMD?_": {"hpc/slurm.py"}}


def test_submitit_accepts_every_keyword_we_pass() -> None:
    """A submitit upgrade that renames or drops a keyword of its (private) renderer fails here, not on a cluster."""
    from submitit.slurm.slurm import _make_sbatch_string

    full = Resources(job_name="j", log_folder=Path("/l"), time_min=5, nodes=2, tasks_per_node=2, gpus_per_node=1,
                     cpus_per_task=2, mem="1G", partition="p", account="a", qos="q", parallelism=1,
                     signal_delay_s=5, setup=("true",), srun_args=("--x",))
    accepted = set(inspect.signature(_make_sbatch_string).parameters)
    assert set(executor_parameters(full, 2)) | {"command", "folder", "map_count"} <= accepted


@pytest.mark.slurm
def test_rendering_equals_what_submitits_executor_submits(slurm_env, tmp_path: Path) -> None:
    """Our rendering (no executor needed) is byte for byte the script a real SlurmExecutor writes."""
    res = dataclasses.replace(jobs.worker_resources(_big()), log_folder=tmp_path / "logs")
    for n in (1, 3):
        ex = SlurmBackend().executor(res, n)
        if n > 1:
            ex.parameters["map_count"] = n  # what SlurmExecutor does for an array
        assert ex._make_submission_file_text(ex._submitit_command_str, "uid") == SlurmBackend().render(n, res)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("nodes", 0, "--nodes: must be >= 1 (got 0)"),
        ("tasks_per_node", 0, "--ntasks-per-node: must be >= 1 (got 0)"),
        ("gpus_per_node", -1, "--gpus-per-node: must be >= 0 (got -1)"),
        ("cpus_per_task", 0, "--cpus-per-task: must be >= 1 (got 0)"),
        ("time_min", 0, "--time: must be >= 1 minute (got 0)"),
        ("parallelism", 0, "--parallel: must be >= 1 (got 0)"),
        ("job_name", " ", "--job-name: must not be empty"),
    ],
)
def test_resources_refuse_what_no_scheduler_could_run(field: str, value: object, message: str) -> None:
    good = Resources(job_name="j", log_folder=Path("/l"), time_min=5)
    assert good.array_parallelism(4) == 4 and dataclasses.replace(good, parallelism=2).array_parallelism(4) == 2
    with pytest.raises(InputError) as e:
        dataclasses.replace(good, **{field: value})
    assert str(e.value) == message


def test_backend_by_executor_name() -> None:
    assert isinstance(backend("slurm"), SlurmBackend) and isinstance(backend("local"), LocalBackend)
    with pytest.raises(InputError, match="--executor: expected slurm or local, got 'auto'"):
        backend("auto")


def test_local_backend_runs_an_array_and_returns_its_results(tmp_path: Path) -> None:
    res = Resources(job_name="local", log_folder=tmp_path / "logs", time_min=2)
    got = LocalBackend().submit_array([functools.partial(operator.mul, i, 10) for i in range(3)], res, "test array")
    assert [j.result() for j in got] == [0, 10, 20]
    assert len({j.job_id for j in got}) == 3 and array_id(got) == str(got[0].job_id)


def test_local_backend_gives_every_task_its_own_gpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Disjoint GPU sets, as the tasks see them (CUDA_VISIBLE_DEVICES of each process); too few is one line."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5,6,7")
    res = Resources(job_name="local", log_folder=tmp_path / "logs", time_min=2, gpus_per_node=2)
    got = LocalBackend().submit_array([functools.partial(os.getenv, "CUDA_VISIBLE_DEVICES")] * 2, res, "test array")
    assert [j.result() for j in got] == ["3,5", "6,7"]
    with pytest.raises(InputError) as e:
        LocalBackend().check(3, res, "test array")
    assert str(e.value) == "the test array needs 6 GPUs (3 local task(s) x 2); 4 visible"


def _dropped() -> None:  # never runs: sbatch refuses the array
    raise AssertionError


@pytest.mark.slurm
def test_partition_check_names_the_known_partitions(slurm_env) -> None:
    SlurmBackend().check_partition(slurm_env["partition"])
    SlurmBackend().check_partition(None)
    with pytest.raises(InputError) as e:
        SlurmBackend().check_partition("nosuchpart")
    assert re.fullmatch(rf"--partition: unknown partition 'nosuchpart' \(have: .*\b{slurm_env['partition']}\b.*\)",
                        str(e.value))


@pytest.mark.slurm
def test_a_real_sbatch_refusal_is_one_error_line(slurm_env, hpc_tools, tmp_path: Path,
                                                 capfd: pytest.CaptureFixture[str]) -> None:
    """A partition that does not exist (the partition check skipped): sbatch itself refuses, we say it once."""
    name = f"refused-{os.getpid()}"
    res = Resources(job_name=name, log_folder=tmp_path / "logs", time_min=5, partition="nosuchpart")
    expected = "Batch job submission failed: Invalid partition name specified"
    for n in (1, 2):
        with pytest.raises(InputError) as e:
            SlurmBackend().submit_array([_dropped] * n, res, "test array")
        assert str(e.value) == f"sbatch refused the test array: {expected}"
    script = tmp_path / "plain.sbatch"
    script.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n#SBATCH --partition=nosuchpart\ntrue\n")
    with pytest.raises(InputError) as e:
        SlurmBackend().submit_script(script, "evaluation job")
    assert str(e.value) == f"sbatch refused the evaluation job: {expected}"
    too_big = dataclasses.replace(res, partition=slurm_env["partition"], nodes=len(slurm_env["nodes"]) + 1)
    with pytest.raises(InputError) as e:
        SlurmBackend().check(2, too_big, "test array")
    assert str(e.value).startswith("sbatch refuses the test array (--nodes/") and "\n" not in str(e.value)
    assert capfd.readouterr().err == "", "sbatch's own lines are not printed besides the error line"
    assert hpc_tools.jobs_named(name) == set()


def test_cpus_follow_gpus_and_the_loader_must_fit() -> None:
    from dualseg.errors import InputError
    from hpc import slurm
    from hpc.submit.jobs import fit_cpus, worker_resources
    from hpc.submit.slurm import render_array

    node = slurm.NodeResources(cpus=32, mem_mb=None, gpus=4)
    plan = _plan({}, gpus_per_node=4)
    fit_cpus(plan, node)
    assert plan.hpc.cpus_per_task == 8  # the node's CPUs per GPU
    script = render_array(worker_resources(plan), 2)
    assert "#SBATCH --cpus-per-task=8" in script and "--cpus-per-task=8" in script.split("srun", 1)[1]
    cpu = _plan({}, gpus_per_node=0)
    fit_cpus(cpu, node)
    assert cpu.hpc.cpus_per_task is None  # a CPU rank takes what the site gives one task
    plan.cfg.data.num_workers = 8
    with pytest.raises(InputError, match=r"data.num_workers: 8 loader worker\(s\) \+ the rank itself need 9 CPUs per "
                                         r"rank, --cpus-per-task is 8"):
        fit_cpus(plan, node)
    plan.cfg.data.num_workers = "auto"  # each rank takes its CPUs less one: fits whatever --cpus-per-task is
    fit_cpus(plan, node)
    assert plan.hpc.cpus_per_task == 8


def _bound_rank(config: str, data_root: str, scratch: str) -> dict[str, object]:
    """Runs in the SLURM rank: the CPUs it is bound to, and the loader workers a real ``fit`` started there."""
    import multiprocessing

    from dualseg.train import fit
    from dualseg.train.log import setup_logging

    setup_logging()
    seen: list[int] = []

    def should_stop() -> bool:  # polled at every step, while the loader's worker processes run
        seen.append(len(multiprocessing.active_children()))
        return False

    cfg = load_config(config, {"data.root": data_root, "train.scratch": scratch, "train.epochs": 1,
                               "train.log_every": 1, "data.num_workers": "auto"})
    fit(cfg, should_stop=should_stop)
    return {"cpus": len(os.sched_getaffinity(0)), "cpus_per_task": os.environ.get("SLURM_CPUS_PER_TASK"),
            "workers": max(seen)}


@pytest.mark.slurm
def test_a_rank_is_bound_to_its_cpus_per_task_and_its_loader_uses_them(slurm_env, slurm_wait, tiny_data, hpc_tools,
                                                                       tmp_path: Path) -> None:
    """The srun line we generate carries --cpus-per-task; under task/affinity the rank's mask holds exactly
    those CPUs, and data.num_workers "auto" starts one loader worker per CPU but the rank's own."""
    from tests.conftest import service_missing

    config = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    plugin = re.search(r"^TaskPlugin\s*=\s*(\S+)", config, re.M)
    if plugin is None or "affinity" not in plugin.group(1):
        service_missing(f"the bed does not bind tasks to CPUs (TaskPlugin={plugin.group(1) if plugin else '?'}: "
                        "DUALSEG_TESTBED_CPUS other than the host's, or a bed from an older slurm.conf.in)")
    k = slurm.partition_resources(slurm_env["partition"]).cpus  # a whole node of the bed
    if k < 2:
        service_missing(f"the bed's nodes have {k} CPU: binding more than one CPU per rank cannot be shown")
    res = Resources(job_name="dualseg-affinity", log_folder=tmp_path / "logs", time_min=5, cpus_per_task=k,
                    partition=slurm_env["partition"])
    probe = functools.partial(_bound_rank, str(hpc_tools.tiny), str(tiny_data), str(tmp_path / "scratch"))
    (job,) = SlurmBackend().submit_array([probe], res, "the affinity probe")
    slurm_wait([job], timeout=300)
    workers = loader_workers("auto", cpus=k)
    assert workers >= 1
    assert job.result() == {"cpus": k, "cpus_per_task": str(k), "workers": workers}
    assert (f"data loader: {workers} worker process(es) per loader (data.num_workers=auto, {k} CPU(s) in this "
            "rank's affinity mask)") in job.stderr()
