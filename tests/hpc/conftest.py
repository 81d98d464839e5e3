"""Helpers for the HPC tests: run the real CLIs, wait for real SLURM jobs, tiny shared data."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny.yaml"


def run_cli(script: str, *args: str, env: dict[str, str] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``python hpc/<script> args`` from the repo root, exactly as a user runs it."""
    return subprocess.run([sys.executable, f"hpc/{script}", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny synthetic dataset of configs/tiny.yaml, generated once per session."""
    from dualseg.config import load_config
    from dualseg.data.synthetic import ensure_synthetic

    root = tmp_path_factory.mktemp("tiny-data")
    ensure_synthetic(root, load_config(TINY).data.synthetic)
    return root


@pytest.fixture()
def tiny_args(tmp_path: Path, tiny_data: Path) -> list[str]:
    return ["--config", str(TINY), "--scratch", str(tmp_path / "scratch"), "--set", f"data.root={tiny_data}"]


def squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30)
    return {line.strip() for line in out.stdout.splitlines() if line.strip()}


def jobs_named(fragment: str) -> set[str]:
    """Queued/running job ids whose name contains ``fragment`` (the cluster is shared: never diff all ids)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30)
    return {line.split()[0] for line in out.stdout.splitlines()
            if len(line.split()) == 2 and fragment in line.split()[1]}


def wait_gone(job_ids: list[str], timeout: float, check: Callable[[], None] | None = None) -> None:
    """Wait until squeue no longer lists any of ``job_ids`` (array ids match their tasks)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = {i for i in squeue_ids() if i.split("_")[0] in {j.split("_")[0] for j in job_ids}}
        if not alive:
            return
        if check is not None:
            check()
        if time.monotonic() > deadline:
            subprocess.run(["scancel", *{j.split("_")[0] for j in job_ids}], capture_output=True, timeout=30)
            pytest.fail(f"SLURM jobs {sorted(alive)} still queued after {timeout:.0f}s (cancelled)")
        time.sleep(1)


def job_ids_from(stdout: str) -> tuple[str, str | None]:
    """(array id, eval id) from the launcher's output."""
    array = eval_id = None
    for line in stdout.splitlines():
        if line.startswith("submitted array "):
            array = line.split()[2]
        if line.startswith("evaluation job "):
            eval_id = line.split()[2]
    assert array, stdout
    return array, eval_id


@pytest.fixture(scope="session")
def hpc_tools() -> SimpleNamespace:
    """The helpers above as one fixture (test modules never import conftest: unique-basename-safe)."""
    return SimpleNamespace(repo=REPO, tiny=TINY, run_cli=run_cli, wait_gone=wait_gone, job_ids_from=job_ids_from,
                           squeue_ids=squeue_ids, jobs_named=jobs_named)
