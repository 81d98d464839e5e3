"""hpc.follow: the commands the launcher prints work pasted in another directory, from a fresh shell."""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from dualseg.config import load_config
from hpc.config import parse_hpc
from hpc.follow import entry_point, submitted_lines
from hpc.paths import REPO_ROOT
from hpc.storage import StorageURL
from hpc.submit.jobs import Plan


def _user_env() -> dict[str, str]:
    """A user's fresh shell: no password anywhere (not the harness's variables, not $PGPASSWORD/$DUALSEG_STORAGE)."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("DUALSEG_TEST_PG") and k not in {"PGPASSWORD", "PGPASSFILE", "DUALSEG_STORAGE"}}


def _paste(line: str, cwd: Path, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=_user_env(), stdin=subprocess.DEVNULL)


def test_entry_points_run_from_any_directory(tmp_path: Path) -> None:
    for name, module in (("dualseg-status", "hpc.status"), ("dualseg-logs", "hpc.logs"),
                         ("dualseg-report", "hpc.report"), ("dualseg-map", "dualseg.predict")):
        cmd = entry_point(name, module)
        assert cmd == name or Path(shlex.split(cmd)[0]).is_absolute(), cmd
        r = _paste(f"{cmd} --help", tmp_path, timeout=120)
        assert r.returncode == 0 and "usage:" in r.stdout, (cmd, r.stderr[-2000:])


def test_printed_commands_are_absolute_and_name_the_storage_without_its_password(tmp_path: Path) -> None:
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml")
    scratch = tmp_path / "my scratch"  # a path that needs quoting
    plan = Plan(cfg, parse_hpc(cfg, {"study": "s1", "workers": 1}), "slurm", scratch,
                StorageURL.parse("postgresql://me:s3cret@db.example/optuna"), "inc", scratch / "s1" / ".pgpass")
    lines = submitted_lines(plan, "77", "78")
    text = "\n".join(lines)
    assert "s3cret" not in text and "postgresql+psycopg2://me@db.example/optuna" in text
    assert f"77 --follow --logdir {shlex.quote(str(scratch / 's1' / 'logs'))}" in text  # one worker: the job, no _0
    assert "squeue -j 77,78" in text and "hpc/" not in text
    for line in lines[1:]:
        words = shlex.split(line, comments=True)
        for w in words:  # every path argument absolute; the passfile named for the commands that connect
            assert not w.startswith(("runs", "./", "configs/")), line
        if "--storage" in words or "optuna-dashboard" in words:
            assert words[0] == f"PGPASSFILE={plan.passfile}", line
    plan.hpc.workers = 3
    assert "77_0 --follow" in "\n".join(submitted_lines(plan, "77", None))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_until(line: str, cwd: Path, done: Callable[[], bool], timeout: float) -> tuple[int, str]:
    """Start a command that runs until stopped (--follow, the dashboard), wait for ``done()``, then Ctrl-C it."""
    out = cwd / "out.txt"
    with open(out, "w") as fh:
        proc = subprocess.Popen(["bash", "-c", line], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT,
                                env=_user_env(), stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        ok = False
        while time.monotonic() < deadline and proc.poll() is None:
            if done():
                ok = True
                break
            time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: to the whole foreground group
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    text = out.read_text()
    assert ok, f"{line} did not get there within {timeout}s (exit {proc.returncode}):\n{text[-2000:]}"
    return proc.returncode, text


@pytest.mark.slurm
@pytest.mark.postgres
def test_follow_commands_work_pasted_in_another_directory(slurm_env, pg_db_url, hpc_tools, tiny_args,
                                                          tmp_path) -> None:
    """The doc test: a search with --scratch, then every printed follow command pasted elsewhere, no password
    in the environment (the launcher had it in the URL: the printed commands name its passfile)."""
    password = make_url(pg_db_url).password
    assert password
    r = subprocess.run([sys.executable, "hpc/launch.py", *tiny_args, "--trials", "1",
                        "--workers", "1", "--partition", slurm_env["partition"], "--time", "10", "--study", "fol",
                        "--storage", pg_db_url], cwd=hpc_tools.repo, capture_output=True, text=True, timeout=120,
                       env=_user_env(), stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr
    array, eval_id = hpc_tools.job_ids_from(r.stdout)
    assert eval_id and password not in r.stdout
    lines = [ln.strip() for ln in r.stdout.split("follow:\n", 1)[1].splitlines() if ln.startswith("  ")]

    def cmd(program: str) -> str:
        found = [ln for ln in lines if f"{program} " in ln.split("#")[0]]
        assert len(found) == 1, (program, r.stdout)
        return found[0]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    q = _paste(cmd("squeue"), elsewhere)  # while the jobs are queued
    assert q.returncode == 0 and array in q.stdout, q.stderr
    hpc_tools.wait_gone([array, eval_id], timeout=300)

    s = _paste(cmd("dualseg-status"), elsewhere)
    assert s.returncode == 0 and s.stdout.startswith("study fol (") and "1/1 finished" in s.stdout, s.stdout + s.stderr
    rc, text = _run_until(cmd("dualseg-logs"), elsewhere, lambda: "trial " in (elsewhere / "out.txt").read_text(),
                          timeout=60)
    assert rc == 0 and "[rank 0]" in text, text[-2000:]
    port = _free_port()

    def answers() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as resp:
                return any(st["study_name"] == "fol" for st in json.load(resp)["study_summaries"])
        except OSError:
            return False

    _, text = _run_until(f"{cmd('optuna-dashboard').split('#')[0]} --port {port}", elsewhere, answers, timeout=90)
    assert password not in text
    rep = _paste(cmd("dualseg-report"), elsewhere)
    assert rep.returncode == 0 and "index.html" in rep.stdout, rep.stdout + rep.stderr
    assert {p.name for p in elsewhere.iterdir()} <= {"out.txt"}  # nothing written where the commands were pasted
