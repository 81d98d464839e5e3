"""Every ``dualseg.data`` module imports in a fresh interpreter, in alphabetical and in reverse order.

An import cycle between two modules fails only when it is entered from one side, so both orders
are tried. The same run checks the layering: the data layer never pulls in the model, the trainer,
prediction or the HPC layer (nor submitit/optuna).
"""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import pytest

import dualseg.data

MODULES = sorted(f"dualseg.data.{m.name}" for m in pkgutil.iter_modules(dualseg.data.__path__))
FORBIDDEN = ("dualseg.model", "dualseg.train", "dualseg.predict", "hpc", "submitit", "optuna")

SCRIPT = """
import importlib, sys
for name in sys.argv[2:]:
    importlib.import_module(name)
bad = sorted(m for m in sys.modules if any(m == f or m.startswith(f + ".") for f in sys.argv[1].split(",")))
print(" ".join(bad))
"""


@pytest.mark.parametrize("order", ["alphabetical", "reverse"])
def test_every_data_module_imports_without_cycles_or_upper_layers(order):
    assert {"dualseg.data.tile", "dualseg.data.write", "dualseg.data.stats", "dualseg.data.dataset"} <= set(MODULES)
    names = MODULES if order == "alphabetical" else MODULES[::-1]
    r = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(FORBIDDEN), *names],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "", f"the data layer imported {r.stdout.strip()}"
