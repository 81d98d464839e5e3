"""hpc/report.py after a small local search: every figure written, not blank, all shown by index.html."""

from __future__ import annotations

import re
import shutil
import subprocess
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


def test_report_writes_every_figure_and_an_index(local_search: Path, capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.report import main

    monkeypatch.delenv("DUALSEG_STORAGE", raising=False)
    assert main(["--study", "rep", "--scratch", str(local_search)]) == 0  # the local study, found without --storage
    report = local_search / "rep" / "results" / "report"
    assert f"report: {report / 'index.html'} ({len(FIGURES)} figures)" in capsys.readouterr().out
    assert sorted(p.name for p in report.glob("*.png")) == sorted(FIGURES)
    for name in FIGURES:
        _not_blank(report / name)
    page = (report / "index.html").read_text()
    assert sorted(re.findall(r'<img src="([^"]+)"', page)) == sorted(FIGURES)
    assert "test OA / mIoU" in page and "rep" in page


def test_unknown_study_is_one_line(local_search: Path, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from hpc.report import main

    monkeypatch.delenv("DUALSEG_STORAGE", raising=False)
    missing = local_search / "nope" / "study.db"
    assert main(["--study", "nope", "--scratch", str(local_search)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: --storage: not given, $DUALSEG_STORAGE unset and no local study at {missing} "
        "(pass --storage or --scratch)"]
    url = f"sqlite:///{local_search / 'rep' / 'study.db'}"
    assert main(["--study", "other", "--storage", url]) == 2
    assert capsys.readouterr().err.strip() == f"error: --study: no study named 'other' in storage {url}"
    assert main(["--study", "rep", "--storage", "mysql://me:S3cret@db/x"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "error: --storage: unsupported database 'mysql' (use postgresql or sqlite)"
    assert "S3cret" not in err


@pytest.mark.parametrize("tool", ["report", "status"])
def test_a_misspelled_option_is_named_not_taken_for_another(tool: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """``--storag URL`` was argparse's abbreviation of --storage; every parser refuses abbreviations now."""
    import importlib

    main = importlib.import_module(f"hpc.{tool}").main
    with pytest.raises(SystemExit) as e:
        main(["--study", "s", "--storag", f"sqlite:///{tmp_path / 'study.db'}"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "error: unrecognized arguments: --storag " in err, err
    assert "not given" not in err and list(tmp_path.iterdir()) == []


def test_index_renders_in_a_real_browser(local_search: Path, hpc_tools, tmp_path: Path) -> None:
    """Headless Chromium screenshot of index.html: the figures load (a broken <img> is a tiny grey icon)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        pytest.skip("no Chromium on this machine (optional check: apt-get install chromium)")
    report = local_search / "rep" / "results" / "report"
    if not (report / "index.html").is_file():
        assert hpc_tools.run_cli("report.py", "--study", "rep", "--scratch", str(local_search)).returncode == 0
    shot = tmp_path / "shot.png"
    log = tmp_path / "chromium.log"
    with open(log, "w") as err:  # not a pipe: Chromium's helper processes keep pipes open long after
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        "--window-size=1280,6000", f"--screenshot={shot}", (report / "index.html").as_uri()],
                       stdout=subprocess.DEVNULL, stderr=err, timeout=120, check=False)
    assert shot.is_file(), log.read_text()[-2000:]
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"))
    rows = np.flatnonzero((a < 250).any(axis=(1, 2)))  # rows with anything but white
    assert rows.max() > 4000, "the page is shorter than its 8 figures"
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 2000  # rendered plots, not alt text
