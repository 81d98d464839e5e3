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


PROBE = """<script>
window.__errors = [];
window.addEventListener("error", e => window.__errors.push(
  e.target && e.target.src ? "cannot load " + e.target.src : String(e.message)), true);
const consoleError = console.error;
console.error = (...a) => { window.__errors.push(a.join(" ")); consoleError(...a); };
window.addEventListener("load", () => {
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify({errors: window.__errors, images: [...document.images].map(
    i => ({src: i.getAttribute("src"), w: i.naturalWidth, h: i.naturalHeight, complete: i.complete}))});
  document.body.appendChild(out);
});
</script>"""


def _chromium() -> str:
    """The browser, or the bed's policy: CI fails (tests/cluster/up.sh installs it), a laptop skips."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        from tests.conftest import service_missing

        service_missing("no Chromium for the report's browser check (apt-get install chromium; "
                        "tests/cluster/up.sh installs it)")
    assert browser is not None
    return browser


def _headless(browser: str, *args: str, log: Path) -> subprocess.CompletedProcess[str]:
    with open(log, "w") as err:  # not a pipe: Chromium's helper processes keep pipes open long after
        return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               "--enable-logging=stderr", "--v=0", *args], stdout=subprocess.PIPE, stderr=err,
                              text=True, timeout=120, check=False)


def test_index_renders_in_a_real_browser(local_search: Path, hpc_tools, tmp_path: Path) -> None:
    """Headless Chromium loads index.html: every <img> decoded (natural size > 0), no console error,
    and a screenshot shows the figures (a broken <img> is a tiny grey icon)."""
    browser = _chromium()
    report = local_search / "rep" / "results" / "report"
    if not (report / "index.html").is_file():
        assert hpc_tools.run_cli("report.py", "--study", "rep", "--scratch", str(local_search)).returncode == 0
    page = tmp_path / "page"
    shutil.copytree(report, page)  # the page and its figures, with a probe script in its head
    html = (page / "index.html").read_text()
    (page / "index.html").write_text(html.replace("</head>", PROBE + "</head>", 1))
    log = tmp_path / "dom.log"
    r = _headless(browser, "--virtual-time-budget=20000", "--dump-dom", (page / "index.html").as_uri(), log=log)
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert found, f"no probe output; chromium said: {log.read_text()[-2000:]}"
    import html as htmllib
    import json

    probe = json.loads(htmllib.unescape(found.group(1)))
    expected = sorted(re.findall(r'<img src="([^"]+)"', html))
    assert sorted(i["src"] for i in probe["images"]) == expected and len(expected) >= len(FIGURES)
    assert [i for i in probe["images"] if not (i["complete"] and i["w"] > 0 and i["h"] > 0)] == []
    assert probe["errors"] == []
    console = [line for line in log.read_text().splitlines() if "CONSOLE" in line
               and ("rror" in line or "Failed" in line or "Uncaught" in line)]
    assert console == [], console
    shot = tmp_path / "shot.png"
    _headless(browser, "--window-size=1280,6000", f"--screenshot={shot}", (report / "index.html").as_uri(),
              log=tmp_path / "shot.log")
    assert shot.is_file(), (tmp_path / "shot.log").read_text()[-2000:]
    with Image.open(shot) as im:
        a = np.asarray(im.convert("RGB"))
    rows = np.flatnonzero((a < 250).any(axis=(1, 2)))  # rows with anything but white
    assert rows.max() > 4000, "the page is shorter than its 8 figures"
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 2000  # rendered plots, not alt text


def test_a_broken_image_fails_the_browser_check(tmp_path: Path) -> None:
    """The probe can fail: a page whose figure is not a PNG reports it (natural size 0, an error)."""
    browser = _chromium()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    (tmp_path / "index.html").write_text(f'<!doctype html><html><head>{PROBE}</head><body>'
                                         '<img src="bad.png"><img src="missing.png"></body></html>')
    r = _headless(browser, "--virtual-time-budget=5000", "--dump-dom", (tmp_path / "index.html").as_uri(),
                  log=tmp_path / "dom.log")
    found = re.search(r'<pre id="probe">(.*?)</pre>', r.stdout, re.S)
    assert found, (tmp_path / "dom.log").read_text()[-2000:]
    import html as htmllib
    import json

    probe = json.loads(htmllib.unescape(found.group(1)))
    assert [i["w"] for i in probe["images"]] == [0, 0]
    assert len(probe["errors"]) == 2 and all("cannot load" in e for e in probe["errors"])


def test_report_names_the_objective_not_optunas_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Axis labels and captions say the study's objective (from its record), never "Objective Value"."""
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.figure import Figure

    import hpc.report as rep

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name="obj", direction="maximize")
    for i in range(4):
        t = study.ask({"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
        t.report(0.1 * i, 0)
        t.report(0.2 * i, 1)
        study.tell(t, 0.3 * i)
    labels: dict[str, list[str]] = {}
    real_save = rep._save

    def keep(fig: Figure, path: Path) -> Path:
        labels[path.name] = [lab for ax in fig.axes for lab in (ax.get_ylabel(), ax.get_xlabel())] + [
            t.get_text() for ax in fig.axes if ax.get_legend() for t in ax.get_legend().get_texts()]
        return real_save(fig, path)

    monkeypatch.setattr(rep, "_save", keep)
    captions = rep.optuna_figures(study, tmp_path, "val_miou")
    plt.close("all")
    assert "val_miou" in labels["optimization_history.png"]
    assert "val_miou (per epoch)" in labels["intermediate_values.png"]
    assert any("val_miou" in lab for lab in labels["param_importances.png"])
    assert not any("Objective Value" in lab for labs in labels.values() for lab in labs)
    assert all("(val_miou, maximize)" in c for c in captions.values())


def test_final_runs_get_spread_and_ensemble_figures(local_search: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A results.json with a ``final`` section as hpc.results writes it (two seeds, their checkpoints):
    error bars, members vs ensemble, and tile panels from the ensemble with its uncertainty (the fold
    table: tests/hpc/test_report_final.py)."""
    import json
    from dataclasses import asdict

    from dualseg.train.summary import spread
    from hpc.report import write_report
    from hpc.results import FinalSection, MemberResult, Summary, finite

    monkeypatch.delenv("DUALSEG_STORAGE", raising=False)
    results = tmp_path / "results"
    shutil.copytree(local_search / "rep" / "results", results, ignore=shutil.ignore_patterns("report"))
    r = json.loads((results / "results.json").read_text())
    k = len(r["test"]["class_names"])
    members = []
    for s in (0, 1):
        shutil.copy(results / "best_model.pth", results / f"m{s}.pth")
        members.append(MemberResult(s, 10 + s, 3, 0, s, None, str(results / f"m{s}.pth"),
                                    {"oa": 0.7 + 0.1 * s, "miou": 0.5 + 0.1 * s, "iou": [0.3 + 0.1 * s] * k}))
    miou = spread([0.5, 0.6])
    section = FinalSection("rep/final", 2, 2, list(r["test"]["class_names"]), members,
                           Summary([0, 1], {"miou": miou}, [], [], {"oa": 0.85, "miou": 0.65, "iou": [0.5] * k}))
    r["final"] = finite(asdict(section))
    (results / "results.json").write_text(json.dumps(r))
    index = write_report("rep", None, local_search, tmp_path / "report", tiles=1, results_dir=results)
    figs = sorted(p.name for p in index.parent.glob("*.png"))
    assert figs == sorted([*FIGURES, "final_per_class.png", "members_ensemble.png"])
    for name in ("final_per_class.png", "members_ensemble.png"):
        _not_blank(index.parent / name)
    page = index.read_text()
    assert "<th>fold</th>" not in page
    assert f"{miou.mean:.4f} ± {miou.std:.4f} [95 % {miou.low:.4f}, {miou.high:.4f}]" in page
    assert "ensemble test miou" in page and "ensemble of 2" in page
