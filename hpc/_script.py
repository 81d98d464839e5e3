"""``python hpc/launch.py`` is re-run as ``python -m hpc.launch``, so ``hpc/`` itself is never on ``sys.path``.

Python puts the folder of a file it runs first on ``sys.path``. For a file of the ``hpc`` package that
folder is ``hpc/``, whose modules (``config``, ``search``, ``signals``, ``logs``, ``storage``, ...) would
then shadow top-level modules of the same name for every library the script imports. So each CLI of
``hpc/`` opens with the same stanza, before any other import::

    if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
        import os
        import runpy

        runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

which runs this file by its path (nothing imported from ``hpc/``, ``sys.path`` untouched). This file checks
that the ``hpc`` package ``python -m`` would import is this checkout's (else one ``error:`` line, exit 2:
running a file must never run another copy of the code) and replaces the process (same pid, same
arguments) with ``python -m hpc.<name>``. Installed, ``dualseg-launch`` and friends (setup.cfg) do the same.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
from typing import NoReturn


def module_for(script: str, cwd: str) -> str:
    """``hpc.<name>`` for the file ``script``; raises ``LookupError`` (the message) when ``python -m`` run in
    ``cwd`` would import another ``hpc`` package, or none."""
    here = os.path.dirname(os.path.realpath(script))
    # `python -m` puts cwd first on sys.path; then the same path, PYTHONPATH and (editable) installs as here
    spec = importlib.machinery.PathFinder.find_spec("hpc", [cwd]) or importlib.util.find_spec("hpc")
    found = [os.path.realpath(p) for p in (spec.submodule_search_locations or [])] if spec is not None else []
    if here not in found:
        where = f"python imports it from {found[0]}" if found else "python cannot import it"
        raise LookupError(f"{script}: the hpc package of this checkout is not installed ({where}): "
                          f"run `pip install -e {os.path.dirname(here)}`")
    return "hpc." + os.path.splitext(os.path.basename(script))[0]


def rerun_as_module(script: str) -> NoReturn:
    try:
        module = module_for(script, os.getcwd())
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    sys.stdout.flush()
    os.execv(sys.executable, [sys.executable, "-m", module, *sys.argv[1:]])


if __name__ == "<run_path>":  # runpy.run_path from a CLI's stanza (which is still __main__)
    rerun_as_module(sys.modules["__main__"].__file__ or "")
