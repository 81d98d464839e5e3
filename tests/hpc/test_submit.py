"""Golden scripts: what the launcher, the self-healing and the map array submit, byte for byte.

``tests/hpc/golden/*.sbatch`` were rendered by the code before ``hpc/submit/`` existed; the volatile
parts (the repository path, the Python executable) are placeholders. A change of a rendered script
(ours or submitit's) shows here as a diff.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import pytest

from dualseg.config import load_config
from hpc import jobs, predict, slurm
from hpc.config import parse_hpc
from hpc.jobs import Plan
from hpc.paths import REPO_ROOT
from hpc.storage import StorageURL

GOLDEN = Path(__file__).parent / "golden"


def _plan(sets: dict, **overrides: object) -> Plan:
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml")
    cfg.hpc.update(sets)
    h = parse_hpc(cfg, {"study": "golden", **overrides})
    return Plan(cfg, h, "slurm", Path("/scratch/me"), StorageURL.parse("postgresql://me@db.example/optuna"),
                "inc-0001", None)


def _norm(text: str) -> str:
    return text.replace(shlex.quote(sys.executable), "<PYTHON>").replace(str(REPO_ROOT), "<REPO>")


def _predict(args: list[str], tasks: int) -> str:
    a = predict.build_parser().parse_args(["--model", "/scratch/me/best_model.pth", "--tiles", "/data/tiles",
                                           "--out", "/scratch/me/maps", *args])
    spec = predict.PredictSpec(str(a.model), str(a.tiles), [f"t{i}" for i in range(5)], str(a.out), tasks)
    return predict.array_script(predict.slurm_executor(a, spec), spec)


def _rendered() -> dict[str, str]:
    big = _plan({"signal_delay_s": 45, "setup": ["module load cuda", "source /opt/env/bin/activate"]},
                nodes=2, gpus_per_node=4, workers=3, parallel=2, partition="gpu", account="acct", qos="normal",
                time="1:00:00", mem="32G", cpus_per_task=8, eval_mem="8G")
    big.passfile = big.study_dir / ".pgpass"
    small = _plan({})
    node = slurm.NodeResources(4, 64000, 2)
    return {
        "search-array.sbatch": jobs.array_script(big),
        "search-array-heal.sbatch": jobs.array_script(big, 2),
        "search-array-single.sbatch": jobs.array_script(small),
        "search-eval.sbatch": jobs.eval_script(big, "12345", jobs.eval_resources(big, node)),
        "search-eval-single.sbatch": jobs.eval_script(small, None, jobs.eval_resources(small, None)),
        "predict-array.sbatch": _predict(["--tasks", "3", "--parallel", "2", "--gpus", "1", "--partition", "gpu",
                                          "--account", "acct", "--qos", "normal", "--time", "0:05:00",
                                          "--mem", "16G", "--cpus-per-task", "4"], 3),
        "predict-array-single.sbatch": _predict(["--tasks", "1"], 1),
    }


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.sbatch")))
def test_rendered_scripts_match_the_golden_files(name: str) -> None:
    assert _norm(_rendered()[name]) == (GOLDEN / name).read_text()
