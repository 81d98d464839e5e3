"""hpc.worker on the real SLURM test bed: the pickle-free path (``sbatch/train.sbatch``, ``python -m hpc.worker``).

The loop's behaviour under faults (signals, killed ranks, requeues, outages) is proven by tests/faults.

"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from sqlalchemy.engine import make_url

# ---------------------------------------------------------------- the real test bed: SLURM + PostgreSQL


def _launch(hpc_tools: SimpleNamespace, tiny_args: list[str], pg_db_url: str, *extra: str) -> tuple[str, Path]:
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--nodes", "2", "--partition", os.environ["DUALSEG_TEST_PARTITION"],
                          "--time", "10", "--no-eval", *extra, env={"DUALSEG_STORAGE": pg_db_url}, timeout=120)
    assert r.returncode == 0, r.stderr
    array, _ = hpc_tools.job_ids_from(r.stdout)
    scratch = Path(tiny_args[tiny_args.index("--scratch") + 1])
    return array, scratch


def _wait_for_line(path: Path, needle: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and needle in path.read_text(errors="replace"):
            return
        time.sleep(0.5)
    pytest.fail(f"{needle!r} did not appear in {path} within {timeout}s")


def _epochs(run_dir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


@pytest.mark.slurm
@pytest.mark.postgres
def test_pickle_free_train_sbatch(slurm_env, pg_db_url, hpc_tools, tiny_args, tiny_data, tmp_path) -> None:
    """docs/hpc.md section 6 as written: `launch.py --prepare-only` (data.root set with --set, not the config
    file's data/tiny), then `sbatch --export=... sbatch/train.sbatch` from the repo root: python -m hpc.worker
    under srun, 2 nodes, trains on the study's data root and logs into the study's log folder only."""
    assert "data.root=" + str(tiny_data) in tiny_args  # another root than configs/tiny.yaml's data/tiny
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--study", "plain", "--trials", "2", "--prepare-only",
                          "--executor", "slurm", env={"DUALSEG_STORAGE": pg_db_url})
    assert r.returncode == 0, r.stderr
    printed = r.stdout.split("submit its workers (sbatch/train.sbatch, no pickles):\n", 1)[1].splitlines()[0].strip()
    assert printed.startswith("sbatch ") and make_url(pg_db_url).password not in printed, r.stdout
    test_only = subprocess.run(["bash", "-c", printed.replace("sbatch ", "sbatch --test-only ", 1)], cwd=tmp_path,
                               capture_output=True, text=True, timeout=60)  # the printed line, pasted elsewhere
    assert test_only.returncode == 0 and "to start at" in test_only.stderr, test_only.stderr
    before = set(os.listdir(hpc_tools.repo))
    public = make_url(pg_db_url)._replace(password=None).render_as_string(hide_password=False)
    passfile = tmp_path / "scratch" / "plain" / ".pgpass"  # written by --prepare-only: it knew the password
    out = subprocess.run(["sbatch", "--parsable", "--array=0-1", "--nodes=2", f"--partition={slurm_env['partition']}",
                          f"--export=ALL,DUALSEG_STUDY=plain,DUALSEG_STORAGE={public},PGPASSFILE={passfile}",
                          "sbatch/train.sbatch"],
                         cwd=hpc_tools.repo, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "DUALSEG_PYTHON": sys.executable})
    assert out.returncode == 0, out.stderr
    array = out.stdout.strip().split(";")[0]
    hpc_tools.wait_gone([array], timeout=180)
    study = optuna.load_study(study_name="plain", storage=pg_db_url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert {t.user_attrs["data_root"] for t in study.trials} == {str(tiny_data)}  # the study's root, not data/tiny
    assert (tmp_path / "scratch" / "plain" / "trial-1" / "best.pt").exists()
    logs = tmp_path / "scratch" / "plain" / "logs"  # the study's log folder, as for the submitit path
    text = "".join(p.read_text() for p in logs.glob(f"{array}_*_1_log.out"))
    assert "[rank 1/2 node n" in text  # rank 1 of the 2-node job trained too
    assert {p.name for p in logs.glob(f"{array}_*_batch.out")} == {f"{array}_0_batch.out", f"{array}_1_batch.out"}
    assert set(os.listdir(hpc_tools.repo)) == before, "nothing written into the submit folder"
    r = hpc_tools.run_cli("logs.py", f"{array}_1", "--rank", "1", "--study", "plain",
                          env={"DUALSEG_STORAGE": pg_db_url})  # its log folder found from the study
    assert r.returncode == 0 and "[rank 1] " in r.stdout and "[rank 0]" not in r.stdout, r.stderr


def test_a_worker_trains_on_the_study_s_config_not_a_second_one(hpc_tools, tiny_args, tmp_path) -> None:
    """`--prepare-only` recorded the config (with its --set overrides): a --config given to a worker is refused."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = hpc_tools.run_cli("launch.py", *tiny_args, "--storage", url, "--study", "rec", "--executor", "local",
                          "--set", "train.epochs=1", "--prepare-only")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-m", "hpc.worker", "--study", "rec", "--storage", url, "--config",
                        str(hpc_tools.tiny)], cwd=hpc_tools.repo, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "DUALSEG_CONFIG": ""})
    assert r.returncode == 2 and r.stderr.count("error:") == 1, r.stderr
    assert "records the configuration it was prepared with" in r.stderr
