"""RunState: the loader workers a run starts are resolved once, in the process, from its real CPU mask."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dualseg.config import Config, to_dict
from dualseg.data.build import loader_workers

_FIT_UNDER_MASK = """
import json, logging, multiprocessing, os, sys
os.sched_setaffinity(0, json.loads(sys.argv[1]))  # a real, smaller mask, as a scheduler binds it
import torch
torch.set_num_threads(1)
from dualseg.config import Config, from_dict
from dualseg.train import fit
from dualseg.train.log import setup_logging
setup_logging(logging.INFO, sys.stderr)
seen = []
def should_stop():  # polled at every step, while the loader's worker processes run
    seen.append(len(multiprocessing.active_children()))
    return False
fit(from_dict(Config, json.loads(sys.argv[2])), should_stop=should_stop)
print(json.dumps(max(seen)))
"""


@pytest.mark.slow
@pytest.mark.parametrize("take", ["one", "all"])
def test_auto_workers_are_the_processes_the_loader_starts(make_cfg: Callable[..., Config], take: str,
                                                          tmp_path: Path) -> None:
    have = sorted(os.sched_getaffinity(0))
    mask = have[:1] if take == "one" else have
    raw = to_dict(make_cfg(epochs=1, run_name=take))
    assert raw["data"]["num_workers"] == "auto"
    r = subprocess.run([sys.executable, "-c", _FIT_UNDER_MASK, json.dumps(mask), json.dumps(raw)],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    workers = loader_workers("auto", cpus=len(mask))
    assert json.loads(r.stdout) == workers and (take == "all" or workers == 0)
    assert (f"data loader: {workers} worker process(es) per loader (data.num_workers=auto, {len(mask)} CPU(s) "
            "in this rank's affinity mask)") in r.stderr
