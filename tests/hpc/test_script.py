"""hpc/_script.py: `python hpc/<cli>.py` runs as `python -m hpc.<cli>`, from anywhere, never with hpc/ on sys.path."""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hpc._script import module_for

REPO = Path(__file__).resolve().parents[2]
CLIS = ["launch", "status", "logs", "report", "predict", "evaluate", "worker"]
STANZA = '''if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))
'''


def _run(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.DEVNULL)


def test_every_cli_opens_with_the_same_stanza_before_any_import() -> None:
    """Identical text, and the first statement after the docstring and ``from __future__``."""
    mains = {p.stem for p in (REPO / "hpc").glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert mains == set(CLIS)
    for name in CLIS:
        text = (REPO / "hpc" / f"{name}.py").read_text()
        body = ast.parse(text).body
        assert isinstance(body[0], ast.Expr) and isinstance(body[1], ast.ImportFrom) and body[1].module == "__future__"
        assert ast.get_source_segment(text, body[2]) + "\n" == STANZA, name
    assert textwrap.indent(STANZA, "    ") in (REPO / "hpc" / "_script.py").read_text()  # documented as is


def test_no_sys_path_edits() -> None:
    pattern = re.compile(r"sys\.path\s*(\.insert|\.append|\.extend|\.remove|\.pop|\[[^]]*\]\s*=(?!=)|[+]?=(?!=))")
    found = [f"{p}:{i}" for folder in ("hpc", "dualseg", "bench") for p in (REPO / folder).rglob("*.py")
             for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


@pytest.mark.parametrize("name", CLIS)
def test_cli_file_runs_from_another_directory(name: str, tmp_path: Path) -> None:
    r = _run(REPO / "hpc" / f"{name}.py", "--help", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("usage: "), r.stderr
    assert r.stderr == ""


def test_rerun_keeps_arguments_and_pid_and_drops_hpc_from_sys_path(tmp_path: Path) -> None:
    """A bad value reaches the re-run module's parser (argv kept); hpc/ is not on the module's sys.path."""
    r = _run(REPO / "hpc" / "launch.py", "--nodes", "two", cwd=tmp_path)
    assert r.returncode == 2 and "--nodes: invalid int value: 'two'" in r.stderr, r.stderr
    probe = tmp_path / "co" / "hpc"
    probe.mkdir(parents=True)
    shutil.copy(REPO / "hpc" / "_script.py", probe / "_script.py")
    (probe / "__init__.py").write_text("")
    (probe / "probe.py").write_text(STANZA + "import json, os, sys\nprint(json.dumps([os.getpid(), sys.path]))\n")
    p = subprocess.Popen([sys.executable, "hpc/probe.py"], cwd=probe.parent, stdout=subprocess.PIPE, text=True,
                         env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0
    pid, path = json.loads(out)
    assert pid == p.pid, "exec, not a child process"
    assert str(probe) not in path and path[0] == str(probe.parent), path


def test_another_checkout_is_refused_with_one_line(tmp_path: Path) -> None:
    """A copy whose hpc package is not the one python imports: never run the other copy's code."""
    other = tmp_path / "other" / "hpc"
    other.mkdir(parents=True)
    for name in ("_script.py", "status.py", "__init__.py"):
        shutil.copy(REPO / "hpc" / name, other / name)
    r = _run(other / "status.py", "--help", cwd=tmp_path)
    assert r.returncode == 2 and r.stdout == "", r
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {other / 'status.py'}: ") and "pip install -e" in lines[0]
    assert str(REPO / "hpc") in lines[0], "names the copy python would import"


def test_module_for(tmp_path: Path) -> None:
    assert module_for(str(REPO / "hpc" / "status.py"), str(REPO)) == "hpc.status"
    assert module_for(str(REPO / "hpc" / "status.py"), str(tmp_path)) == "hpc.status"  # PYTHONPATH / install
    with pytest.raises(LookupError, match="pip install -e"):
        module_for(str(tmp_path / "hpc" / "status.py"), str(tmp_path))
