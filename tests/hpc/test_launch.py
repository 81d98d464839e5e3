"""The launcher as users run it: --help, --dry-run, bad input, the local default and a real SLURM search."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from sqlalchemy.engine import make_url

OPTIONS = ["--config", "--nodes", "--gpus-per-node", "--trials", "--workers", "--parallel", "--partition", "--account",
           "--qos", "--time", "--mem", "--cpus-per-task", "--storage", "--study", "--scratch", "--executor",
           "--dry-run", "--no-eval", "--allow-change"]


def test_help_lists_every_option(hpc_tools: SimpleNamespace) -> None:
    r = hpc_tools.run_cli("launch.py", "--help")
    assert r.returncode == 0
    for opt in OPTIONS:
        assert opt in r.stdout, opt


def _check_results(path: Path, trials: int) -> dict:
    r = json.loads(path.read_text())
    assert r["trials"]["requested"] == trials
    assert r["trials"]["by_state"]["COMPLETE"] + r["trials"]["by_state"]["PRUNED"] == trials
    t = r["test"]
    k = len(t["class_names"])
    assert 0.0 <= t["oa"] <= 1.0 and 0.0 <= t["miou"] <= 1.0 and t["loss"] > 0
    assert len(t["iou"]) == k and len(t["f1"]) == k and len(t["confusion_matrix"]) == k
    assert set(r["best_trial"]["params"]) == {"train.lr", "model.dropout", "model.temporal"}
    assert r["config"]["model"]["levels"] == 2 and r["code_version"]
    assert (path.parent / "best_model.pth").stat().st_size > 0
    return r


def test_local_executor_runs_the_search_and_prints_the_result(hpc_tools, tiny_args, tmp_path) -> None:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--executor", "local", "--trials", "2", "--study", "loc")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "best trial" in r.stdout and "results.json" in r.stdout
    study_dir = tmp_path / "scratch" / "loc"
    _check_results(study_dir / "results" / "results.json", 2)
    study = optuna.load_study(study_name="loc", storage=f"sqlite:///{study_dir / 'study.db'}")
    assert len(study.trials) == 2
    assert sorted(p.name for p in study_dir.glob("trial-*")) == ["trial-0", "trial-1"]
    assert all((study_dir / f"trial-{i}" / n).exists() for i in (0, 1) for n in ("best.pt", "metrics.jsonl"))
    assert not any((study_dir / f"trial-{i}" / "last.pt").exists() for i in (0, 1)), "finished trials drop last.pt"
    assert [ln.split()[1] for ln in r.stdout.splitlines() if ln.startswith("trial ")] == ["0", "1"], r.stdout
    elsewhere = tmp_path / "elsewhere"  # the printed commands work pasted in another directory
    elsewhere.mkdir()
    printed = {ln.split(":", 1)[0]: ln.split(":", 1)[1].strip() for ln in r.stdout.splitlines()
               if ln.startswith(("status:", "report:")) and "index.html" not in ln}
    for name, expected in (("status", "study loc (minimize): 2/2 finished"), ("report", "index.html")):
        p = subprocess.run(["bash", "-c", printed[name]], cwd=elsewhere, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "SCRATCH": str(elsewhere)}, stdin=subprocess.DEVNULL)
        assert p.returncode == 0 and expected in p.stdout, (printed[name], p.stdout, p.stderr[-2000:])
    assert list(elsewhere.iterdir()) == []


def test_local_executor_refuses_multi_node(hpc_tools, tiny_args) -> None:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--executor", "local", "--nodes", "2")
    assert r.returncode == 2 and r.stderr.strip() == ("error: --nodes: the local executor runs on one machine (got 2); "
                                                      "use --executor slurm")


@pytest.mark.slurm
@pytest.mark.postgres
def test_dry_run_prints_every_script_and_submits_nothing(slurm_env, pg_db_url, hpc_tools, tiny_args,
                                                         tmp_path) -> None:
    from sqlalchemy.engine import make_url

    url = make_url(pg_db_url)
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--dry-run", "--study", "dry-e9f1", "--nodes", "2", "--workers", "3",
                          "--parallel", "2", "--partition", slurm_env["partition"], "--time", "1:00:00", "--mem", "4G",
                          "--set", "hpc.signal_delay_s=45", "--set", "hpc.setup=[module load foo]",
                          "--storage", pg_db_url)  # the dry run checks the database too
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for line in ("#SBATCH --nodes=2", "#SBATCH --array=0-2%2", "#SBATCH --time=60", "#SBATCH --mem=4G",
                 f"#SBATCH --partition={slurm_env['partition']}", "#SBATCH --signal=USR2@45", "#SBATCH --requeue",
                 "# setup\nmodule load foo",
                 "#SBATCH --dependency=afterany:<ARRAY_ID>", "-m hpc.evaluate", "--kill-on-bad-exit=1"):
        assert line in out, line
    assert str(url.password) not in out + r.stderr and f"{url.username}:***@{url.host}" in out
    assert hpc_tools.jobs_named("dry-e9f1") == set()
    assert not (tmp_path / "scratch").exists(), "a dry run must not write anything"


@pytest.mark.slurm
@pytest.mark.postgres
@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--nodes", "0"], "error: --nodes: must be >= 1 (got 0)"),
        (["--partition", "nosuchpart"], "error: --partition: unknown partition 'nosuchpart'"),
        (["--nodes", "3"], "error: sbatch refuses the worker array"),  # the bed has 2 nodes
        (["--config", "configs/missing.yaml"], "error: --config: file not found: configs/missing.yaml"),
        (["--storage", "WRONGPW"], "password authentication failed"),
        (["--storage", "PORT1"], "unreachable: connection to server at \"127.0.0.1\", port 1 failed"),
        (["--executor", "slurm"], "error: --storage: a SLURM search needs a shared database"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_submits_nothing(slurm_env, pg_db_url, hpc_tools, tiny_args, tmp_path,
                                                          extra, expected) -> None:
    url = make_url(pg_db_url)
    subst = {"WRONGPW": url._replace(password="Wr0ngPw").render_as_string(hide_password=False),
             "PORT1": url._replace(port=1).render_as_string(hide_password=False)}
    extra = [subst.get(x, x) for x in extra]
    args = [a for a in tiny_args]
    if "--config" in extra:
        i = args.index("--config")
        del args[i:i + 2]
    env = {"DUALSEG_STORAGE": ""} if "--storage" not in extra else {}
    if "--storage" not in extra and expected.find("shared database") < 0:
        extra += ["--storage", pg_db_url]
    study = f"bad-{abs(hash(tuple(extra))) % 10**8}"
    r = hpc_tools.run_cli("launch.py", *args, "--study", study, "--partition", slurm_env["partition"], *extra, env=env)
    assert r.returncode == 2, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], r.stderr
    assert url.password not in r.stderr + r.stdout and "Wr0ngPw" not in r.stderr
    assert hpc_tools.jobs_named(study) == set()
    assert not (tmp_path / "scratch" / study / "logs").exists()


@pytest.mark.slurm
@pytest.mark.postgres
def test_slurm_search_two_node_ddp_exact_count_eval_and_no_password_leak(slurm_env, pg_db_url, hpc_tools, tiny_args,
                                                                         tmp_path) -> None:
    password = make_url(pg_db_url).password
    assert password
    # a user's shell: the test harness's own variables (which hold the test password) are not there
    clean = {k: v for k, v in os.environ.items() if not k.startswith("DUALSEG_TEST_PG") and k != "PGPASSWORD"}
    r = subprocess.run([sys.executable, "hpc/launch.py", *tiny_args, "--nodes", "2", "--trials", "4", "--workers", "2",
                        "--partition", slurm_env["partition"], "--time", "10", "--study", "e2e",
                        "--storage", pg_db_url],
                       cwd=hpc_tools.repo, capture_output=True, text=True, timeout=120,
                       env={**clean, "DUALSEG_STORAGE": ""}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    array, eval_id = hpc_tools.job_ids_from(r.stdout)
    assert eval_id and password not in r.stdout + r.stderr and "***" in r.stdout
    seen: list[str] = []

    def snapshot() -> None:  # argv of every process and SLURM's record of the jobs, while they run
        seen.append(subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout)
        seen.append(subprocess.run(["scontrol", "show", "job", array], capture_output=True, text=True).stdout)

    hpc_tools.wait_gone([array, eval_id], timeout=300, check=snapshot)
    study_dir = tmp_path / "scratch" / "e2e"
    results = _check_results(study_dir / "results" / "results.json", 4)
    study = optuna.load_study(study_name="e2e", storage=pg_db_url)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials) == 4 and len(study.trials) == 4
    assert results["best_trial"]["number"] == study.best_trial.number
    jobs = {t.user_attrs["job_id"] for t in study.trials}
    assert jobs <= {f"{array}_0", f"{array}_1"} and len(jobs) == 2, jobs  # both array tasks pulled trials
    logs = study_dir / "logs"
    for task in (0, 1):
        for rank in (0, 1):  # 2-node DDP: every rank of every task logged with its context
            text = (logs / f"{array}_{task}_{rank}_log.out").read_text()
            assert f"[rank {rank}/2 node n" in text and "trial " in text
    files = [p for p in study_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".pkl" for p in files) and any(p.name.endswith(".sbatch") for p in files)
    passfile = study_dir / ".pgpass"  # the one place the password may be: libpq's mode-0600 passfile
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    leaks = [str(p) for p in files if p != passfile and password.encode() in p.read_bytes()]
    assert leaks == [], f"password found in {leaks}"
    assert not any(password in s for s in seen), "password in a job's argv or SLURM's job record"
    state = Path(slurm_env["dir"]) / "slurm" / "state"  # slurmctld's record of each job: script + environment
    ours = [d for d in state.glob("hash.*/job.*") if any(str(study_dir).encode() in f.read_bytes()
                                                       for f in d.iterdir() if f.is_file())]
    assert ours, "no job state of this search found under the bed's StateSaveLocation"
    stored = [str(f) for d in ours for f in d.iterdir() if f.is_file() and password.encode() in f.read_bytes()]
    assert stored == [], f"password stored by slurmctld (job environment/script): {stored}"
