"""setup.cfg's console_scripts: every CLI of the project is declared, and every target imports and runs.

The commands themselves exist only after ``pip install -e .``; these tests read the declaration and run
each ``module:function`` as the generated wrapper does (``sys.exit(function())``), in one subprocess.
"""

from __future__ import annotations

import configparser
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def console_scripts() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(REPO / "setup.cfg")
    lines = cfg["options.entry_points"]["console_scripts"].strip().splitlines()
    return {name.strip(): target.strip() for name, _, target in (ln.partition("=") for ln in lines)}


def test_every_cli_module_has_an_entry_point() -> None:
    declared = {target.split(":")[0] for target in console_scripts().values()}
    clis = set()
    for path in [*REPO.glob("hpc/**/*.py"), *REPO.glob("dualseg/**/*.py")]:
        text = path.read_text()
        if re.search(r"^if __name__ == \"__main__\":", text, re.M) and re.search(r"^def main\(", text, re.M):
            clis.add(".".join(path.relative_to(REPO).with_suffix("").parts))
    assert clis and clis == declared
    assert all(name.startswith("dualseg-") for name in console_scripts())
    for name in ("launch", "status", "logs", "report", "predict", "evaluate", "worker", "train", "map"):
        assert f"dualseg-{name}" in console_scripts(), name


def test_every_target_is_callable() -> None:
    for name, target in console_scripts().items():
        module, _, func = target.partition(":")
        assert callable(getattr(importlib.import_module(module), func)), name


RUN_ALL = """
import contextlib, importlib, io, json, sys
out = {}
for name, target in json.loads(sys.argv[1]).items():
    module, _, func = target.partition(":")
    sys.argv = [name, "--help"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        try:
            code = importlib.import_module(module).__dict__[func]()  # the wrapper: sys.exit(main())
        except SystemExit as exc:
            code = exc.code
    out[name] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def test_every_entry_point_runs(tmp_path: Path) -> None:
    """``--help`` through each function with the wrapper's argv, from a directory outside the checkout."""
    scripts = console_scripts()
    r = subprocess.run([sys.executable, "-c", RUN_ALL, json.dumps(scripts)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads(r.stdout.splitlines()[-1])
    assert set(result) == set(scripts)
    for name, (code, text) in result.items():
        assert code == 0 and text.startswith("usage: ") and "--help" in text, (name, code, text[:300])
