"""hpc/report.py after a small local search: every figure written, not blank, all shown by index.html."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

FIGURES = ["optimization_history.png", "param_importances.png", "parallel_coordinate.png",
           "intermediate_values.png", "learning_curves.png", "confusion_matrix.png", "per_class.png",
           "test_tiles.png"]


@pytest.fixture(scope="module")
def local_search(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, hpc_tools) -> Path:
    """3 trials of configs/tiny.yaml through the launcher's local mode (study, results, best_model.pth)."""
    scratch = tmp_path_factory.mktemp("report") / "scratch"
    r = hpc_tools.run_cli("launch.py", "--config", str(hpc_tools.tiny), "--scratch", str(scratch), "--set",
                          f"data.root={tiny_data}", "--executor", "local", "--trials", "3", "--study", "rep",
                          env={"DUALSEG_STORAGE": ""})
    assert r.returncode == 0, r.stderr
    assert (scratch / "rep" / "results" / "results.json").is_file()
    return scratch


def _not_blank(path: Path) -> None:
    with Image.open(path) as im:
        a = np.asarray(im.convert("RGB"), dtype=np.int16)
    assert a.shape[0] > 200 and a.shape[1] > 400, path.name
    assert path.stat().st_size > 10_000, path.name
    colours = np.unique(a.reshape(-1, 3), axis=0)
    assert len(colours) > 20 and a.std() > 10, f"{path.name} looks blank"


def test_report_writes_every_figure_and_an_index(local_search: Path, hpc_tools) -> None:
    r = hpc_tools.run_cli("report.py", "--study", "rep", "--scratch", str(local_search), env={"DUALSEG_STORAGE": ""})
    assert r.returncode == 0, r.stderr
    report = local_search / "rep" / "results" / "report"
    assert f"report: {report / 'index.html'} ({len(FIGURES)} figures)" in r.stdout
    assert sorted(p.name for p in report.glob("*.png")) == sorted(FIGURES)
    for name in FIGURES:
        _not_blank(report / name)
    page = (report / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(FIGURES)
    assert "test OA / mIoU" in page and "rep" in page


def test_unknown_study_is_one_line(local_search: Path, hpc_tools, tmp_path: Path) -> None:
    r = hpc_tools.run_cli("report.py", "--study", "nope", "--scratch", str(local_search), env={"DUALSEG_STORAGE": ""})
    missing = local_search / "nope" / "study.db"
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        f"error: --storage: not given, $DUALSEG_STORAGE unset and no local study at {missing} (pass --storage or --scratch)"]
    db = f"sqlite:///{local_search / 'rep' / 'study.db'}"
    r = hpc_tools.run_cli("report.py", "--study", "other", "--storage", db, env={"DUALSEG_STORAGE": ""})
    assert r.returncode == 2 and r.stderr.strip() == "error: --study: no study named 'other' in this storage"
