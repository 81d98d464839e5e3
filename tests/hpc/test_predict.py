"""hpc/predict.py: validation, --dry-run, and a real 2-task array on the two-node bed that maps 4 tiles once each."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dualseg.config import apply_overrides, load_config
from dualseg.predict import read_map


@pytest.fixture(scope="module")
def tiny_model(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory, hpc_tools) -> Path:
    """A 1-epoch model of configs/tiny.yaml, exported slim."""
    from dualseg.train import fit
    from dualseg.train.export import export_model

    torch.set_num_threads(1)
    scratch = tmp_path_factory.mktemp("predict-model")
    cfg = apply_overrides(load_config(hpc_tools.tiny), {"data.root": str(tiny_data), "train.epochs": 1,
                                                        "train.scratch": str(scratch), "train.run_name": "m"})
    res = fit(cfg)
    return export_model(res.run_dir / "best.pt", None, scratch / "best_model.pth")


def _tiles(tiny_data: Path) -> list[str]:
    return sorted(p.name.removesuffix(".zarr") for p in tiny_data.glob("*.zarr"))[:4]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--tasks", "0"], "error: --tasks: must be >= 1 (got 0)"),
        (["--tile", "nope"], "error: tile nope: not found"),
        (["--time", "soon"], "error: --time: cannot parse 'soon'"),
        (["--overlap", "-0.1"], "error: --overlap must be in [0, 1)"),
    ],
)
def test_bad_input_is_one_line_and_submits_nothing(tiny_model: Path, tiny_data: Path, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str], extra: list[str],
                                                   message: str) -> None:
    from hpc.predict import main

    out = tmp_path / "maps"
    rc = main(["--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(out), "--executor", "local", *extra])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith(message), lines
    assert not out.exists()


def test_an_out_inside_the_tiles_or_holding_a_tile_is_refused_before_submitting(
    tiny_model: Path, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same check as ``python -m dualseg.predict`` (dualseg.predict.outputs), before any job exists."""
    import shutil

    from hpc.predict import main

    base = ["--model", str(tiny_model), "--tiles", str(tiny_data), "--executor", "local"]
    assert main([*base, "--out", str(tiny_data / "maps")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out: {tiny_data / 'maps'} is inside the tiles folder --tiles {tiny_data}\n"
    name = _tiles(tiny_data)[0]
    shutil.copytree(tiny_data / f"{name}.zarr", tmp_path / "maps" / f"{name}.zarr")  # a tile is not a map
    assert main([*base, "--out", str(tmp_path / "maps")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --out: {tmp_path / 'maps' / name}.zarr exists and is not a map"), err
    assert err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "maps").iterdir()) == [f"{name}.zarr"]  # no logs/, nothing submitted
    assert not (tiny_data / "maps").exists()


@pytest.mark.slurm
def test_dry_run_prints_the_array_and_submits_nothing(slurm_env, tiny_model: Path, tiny_data: Path, tmp_path: Path,
                                                      hpc_tools) -> None:
    out = tmp_path / "maps"
    r = hpc_tools.run_cli("predict.py", "--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(out),
                          "--tasks", "3", "--partition", slurm_env["partition"], "--time", "0:05:00", "--executor",
                          "slurm", "--dry-run")
    assert r.returncode == 0, r.stderr
    for line in ("#SBATCH --array=0-2%3", "#SBATCH --time=5", f"#SBATCH --partition={slurm_env['partition']}",
                 "#SBATCH --requeue", "# array of 3 task(s): 6 tile(s) to map"):
        assert line in r.stdout, line
    assert not out.exists()
    bad = hpc_tools.run_cli("predict.py", "--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(out),
                            "--partition", "nosuchpart", "--executor", "slurm")
    assert bad.returncode == 2 and "error: --partition: unknown partition 'nosuchpart'" in bad.stderr
    gpus = hpc_tools.run_cli("predict.py", "--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(out),
                             "--gpus", "1", "--partition", slurm_env["partition"], "--executor", "slurm", "--dry-run")
    lines = gpus.stderr.strip().splitlines()  # the bed has no GPUs: one line, one list of the options at fault
    assert gpus.returncode == 2 and len(lines) == 1 and lines[0].startswith(
        "error: sbatch refuses the prediction array (--partition/--account/--qos/--time/--mem/--cpus-per-task/--gpus): "
    ) and lines[0].count("(--") == 1, gpus.stderr
    assert not out.exists()


@pytest.mark.slurm
def test_two_task_array_maps_four_tiles_once_and_a_rerun_skips(slurm_env, tiny_model: Path, tiny_data: Path,
                                                                tmp_path: Path, hpc_tools) -> None:
    out = tmp_path / "maps"
    tiles = _tiles(tiny_data)
    args = ["--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(out), "--tasks", "2",
            "--partition", slurm_env["partition"], "--time", "10", "--executor", "slurm",
            *[x for t in tiles for x in ("--tile", t)]]
    r = hpc_tools.run_cli("predict.py", *args)
    assert r.returncode == 0, r.stderr
    m = re.search(r"submitted array (\d+): 4 tile\(s\) to map in 2 task\(s\)", r.stdout)
    assert m, r.stdout
    assert f"maps:  {out}/<tile>.zarr" in r.stdout
    hpc_tools.wait_gone([m.group(1)], timeout=240)
    logs = sorted((out / "logs").glob(f"{m.group(1)}_*_0_log.out"))
    assert len(logs) == 2
    written: list[str] = []
    for log in logs:
        written += re.findall(r"^mapped (\S+) written", log.read_text(), flags=re.MULTILINE)
    assert sorted(written) == tiles  # each tile once, by exactly one of the two tasks
    for t in tiles:
        assert read_map(out / f"{t}.zarr")["classes"].shape == (32, 32)
    again = hpc_tools.run_cli("predict.py", *args)
    assert again.returncode == 0, again.stderr
    assert f"all 4 tile(s) already mapped in {out}; nothing to submit" in again.stdout


def test_local_executor_maps_and_resumes(tiny_model: Path, tiny_data: Path, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from hpc.predict import main

    out = tmp_path / "maps"
    tiles = _tiles(tiny_data)[:3]
    args = ["--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(out), "--executor", "local",
            "--tasks", "2", *[x for t in tiles[:2] for x in ("--tile", t)]]
    assert main(args) == 0
    assert "2 map(s) written" in capsys.readouterr().out
    assert main([*args, "--tile", tiles[2]]) == 0  # one more tile: only it is mapped
    assert "1 map(s) written" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.zarr")) == [f"{t}.zarr" for t in sorted(tiles)]


def test_every_tile_once_over_tasks_and_processes() -> None:
    from hpc.predict import share

    tiles = [f"t{i}" for i in range(11)]
    got = [t for i in range(3) for r in range(2) for t in share(tiles, i, 3, r, 2)]
    assert sorted(got) == sorted(tiles) and len(got) == len(tiles)
    assert share(tiles, 1, 3) == ["t1", "t4", "t7", "t10"]  # one process per task: the task's whole share
    assert share(tiles, 1, 3, 1, 2) == ["t4", "t10"]


def test_each_process_takes_its_own_gpu() -> None:
    from dualseg.errors import InputError
    from hpc.predict import task_device

    assert task_device(0, 0, 1) == "cpu"  # CPU task (--gpus 0: CUDA_VISIBLE_DEVICES is empty)
    assert task_device(3, 1, 4) == "cuda:0"  # one GPU bound per process (--gpu-bind): its own
    assert [task_device(r, 4, 4) for r in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]  # per node
    with pytest.raises(InputError, match="LOCAL_RANK=2 but only 2 CUDA devices"):
        task_device(2, 2, 4)


def test_gpus_default_to_one_per_task_where_there_are_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.predict import default_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert default_gpus("local", None) == 0 or torch.cuda.device_count() > 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert default_gpus("local", None) == 1


def test_local_tasks_get_distinct_gpus_and_gpus_n_runs_n_processes(tiny_model: Path, tiny_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Planned, not run (no GPU here): 4 tasks on 2 visible GPUs become 2 tasks, GPUs 2 and 5; ``--gpus 2``
    asks for 2 processes per task and 2 GPUs each."""
    from hpc.predict import build_parser, plan, resources
    from hpc.submit import LocalBackend

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    base = ["--model", str(tiny_model), "--tiles", str(tiny_data), "--out", str(tmp_path / "m"), "--executor", "local"]
    a = build_parser().parse_args([*base, "--tasks", "4"])
    spec, _, executor = plan(a)
    assert (executor, a.gpus, spec.tasks, spec.ranks) == ("local", 1, 2, 1)
    res = resources(a, spec)
    assert LocalBackend().gpu_sets(spec.tasks, res, "x") == [[2], [5]]
    a = build_parser().parse_args([*base, "--tasks", "1", "--gpus", "2"])
    spec, _, _ = plan(a)
    res = resources(a, spec)
    assert (spec.ranks, res.tasks_per_node, res.gpus_per_node) == (2, 2, 2)
    assert LocalBackend().gpu_sets(1, res, "x") == [[2, 5]]
    a = build_parser().parse_args([*base, "--tasks", "2", "--gpus", "2"])  # asked for explicitly: not shrunk
    spec, _, _ = plan(a)
    with pytest.raises(Exception, match="needs 4 GPUs"):
        LocalBackend().check(spec.tasks, resources(a, spec), "prediction array")
