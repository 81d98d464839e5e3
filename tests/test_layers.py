"""The package layering of ``dualseg/``: data -> model -> infer -> train / predict, no cycles.

Every import statement of every module (function-level ones included: a lazy import is still a
dependency) is read with ``ast``; a module may import its own package or a lower layer only, and
``train`` and ``predict`` (one layer, siblings) never import each other. The import checks run in a
fresh interpreter, so what this test process has already imported does not matter.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "dualseg"
# top-level modules (dualseg/__init__, config, strict, errors, io) are the base every layer may use
LAYER = {"": 0, "config": 0, "strict": 0, "errors": 0, "io": 0,
         "data": 1, "model": 2, "infer": 3, "train": 4, "predict": 4}


def _module(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, root: Path = REPO) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``dualseg`` import in ``path`` (a file under ``root``)."""
    mod = _module(path, root)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}" if base == "dualseg" else base) for a in node.names]
    return sorted({(ln, m) for ln, m in out if m == "dualseg" or m.startswith("dualseg.")})


def _package(module: str) -> str:
    """``dualseg.train.steps`` -> ``train``; a top-level module (``dualseg.io``) -> its own name."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_import_goes_to_the_same_package_or_down() -> None:
    bad = []
    modules = sorted(PKG.rglob("*.py"))
    assert len(modules) > 40  # the walk really sees the library
    for path in modules:
        src = _package(_module(path))
        assert src in LAYER, f"{path}: package {src!r} has no layer in tests/test_layers.py"
        for line, target in _imports(path):
            dst = _package(target)
            if dst not in LAYER:  # ``from dualseg import code_version``: a name of the base package
                dst = ""
            if dst != src and LAYER[dst] >= LAYER[src] and LAYER[src] > 0:  # base modules use each other
                bad.append(f"{path.relative_to(REPO)}:{line}: {src or 'dualseg'} imports {target}")
    assert not bad, "imports against the layering data -> model -> infer -> train/predict:\n" + "\n".join(bad)


def test_the_walk_sees_lazy_and_relative_imports(tmp_path: Path) -> None:
    """The checker itself: a function-level and a relative import are both found."""
    f = tmp_path / "dualseg" / "predict" / "x.py"
    f.parent.mkdir(parents=True)
    f.write_text("def g():\n    from dualseg.train.export import export_model\n    from ..train import fit\n")
    assert [m for _, m in _imports(f, tmp_path)] == ["dualseg.train.export", "dualseg.train"]


def _loaded_after(statement: str) -> list[str]:
    code = f"import sys\n{statement}\nprint('\\n'.join(m for m in sys.modules if m.startswith('dualseg')))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


@pytest.mark.parametrize(("statement", "forbidden"), [
    ("import dualseg.predict", ("dualseg.train",)),
    ("import dualseg.predict.__main__, dualseg.predict.maps", ("dualseg.train",)),
    ("import dualseg.infer", ("dualseg.train", "dualseg.predict")),
])
def test_making_a_map_does_not_load_the_trainer(statement: str, forbidden: tuple[str, ...]) -> None:
    loaded = _loaded_after(statement)
    assert "dualseg.infer.window" in loaded  # the import really happened
    assert not [m for m in loaded if m.startswith(forbidden)], loaded
