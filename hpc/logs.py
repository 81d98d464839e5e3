"""Show or follow the per-rank logs of a job: ``python hpc/logs.py 1234_0 --follow``.

submitit writes one file per rank (``<jobid>_<rank>_log.out/.err``, arrays ``<array>_<task>_<rank>``)
in append mode, so a requeued job keeps writing to the same files. This merges them into one
stream with a ``[rank N]`` prefix (``[<task> rank N]`` when several array tasks match), ordered by
each line's timestamp, and with ``--follow`` keeps polling like ``tail -F``: appended lines, files
of ranks that appear later, and files that were truncated are all picked up.
"""

from __future__ import annotations

if not __package__:  # run as a file: re-run as `python -m hpc.<name>` (hpc/_script.py)
    import os
    import runpy

    runpy.run_path(os.path.join(os.path.dirname(__file__), "_script.py"))

import argparse
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from dualseg.errors import InputError, report_error
from hpc.paths import resolve_scratch

_TS = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?)")


@dataclass
class LogFile:
    path: Path
    label: str
    offset: int = 0
    partial: str = ""


def match_files(logdir: Path, job: str, rank: int | None, err: bool) -> dict[Path, str]:
    """Files of ``job`` (``1234``, ``1234_5``) in ``logdir`` -> display label."""
    suffix = "err" if err else "out"
    pat = re.compile(rf"^{re.escape(job)}(?:_(\d+))?_(\d+)_log\.{suffix}$")
    found: dict[Path, tuple[str | None, int]] = {}
    for p in logdir.iterdir() if logdir.is_dir() else []:
        m = pat.match(p.name)
        if m and (rank is None or int(m.group(2)) == rank):
            found[p] = (m.group(1), int(m.group(2)))
    tasks = {t for t, _ in found.values()}
    multi = len(tasks) > 1
    return {p: (f"[{job}_{t} rank {r}]" if multi and t is not None else f"[rank {r}]") for p, (t, r) in found.items()}


def find_logdir(job: str, logdir: str | None) -> Path:
    """``--logdir``, ``$DUALSEG_LOGDIR``, else the study folders under scratch holding this job."""
    if logdir:
        return Path(logdir)
    if os.environ.get("DUALSEG_LOGDIR"):
        return Path(os.environ["DUALSEG_LOGDIR"])
    root = resolve_scratch(None, None)
    for cand in sorted(root.glob("*/logs")):
        if any(cand.glob(f"{job}_*_log.*")):
            return cand
    raise InputError(f"logs: no log files of job {job} under {root}/*/logs (pass --logdir)")


def _read_new(f: LogFile) -> list[str]:
    try:
        size = f.path.stat().st_size
    except FileNotFoundError:
        return []
    if size < f.offset:  # truncated or replaced: start over
        f.offset, f.partial = 0, ""
    if size == f.offset:
        return []
    with open(f.path, "rb") as fh:
        fh.seek(f.offset)
        data = fh.read(size - f.offset)
    f.offset += len(data)
    text = f.partial + data.decode("utf-8", errors="replace")
    lines = text.split("\n")
    f.partial = lines.pop()  # incomplete last line waits for its newline
    return [f"{f.label} {line}" for line in lines]


def _merge(chunks: list[list[str]]) -> list[str]:
    """Interleave lines by timestamp; untimestamped lines stay behind their predecessor."""
    keyed = []
    for i, chunk in enumerate(chunks):
        last = ""
        for j, line in enumerate(chunk):
            body = line.split("] ", 1)[1] if "] " in line else line
            m = _TS.match(body)
            last = m.group(1).replace("T", " ").replace(".", ",") if m else last
            keyed.append((last, i, j, line))
    keyed.sort()
    return [k[3] for k in keyed]


def show(logdir: Path, job: str, rank: int | None = None, err: bool = False, follow: bool = False,
         poll: float = 0.5, out: TextIO = sys.stdout, max_polls: int | None = None) -> int:
    """Print the merged logs; with ``follow`` keep polling (``max_polls`` bounds it, for tests)."""
    files: dict[Path, LogFile] = {}
    polls = 0
    while True:
        for path, label in match_files(logdir, job, rank, err).items():
            files.setdefault(path, LogFile(path, label))
        for f in files.values():  # labels may change once a second array task appears
            f.label = match_files(logdir, job, rank, err).get(f.path, f.label)
        lines = _merge([_read_new(f) for f in sorted(files.values(), key=lambda f: f.label)])
        if lines:
            out.write("\n".join(lines) + "\n")
            out.flush()
        if not follow:
            if not files:
                raise InputError(f"logs: no {'err' if err else 'out'} files of job {job}"
                                 f"{'' if rank is None else f' rank {rank}'} in {logdir}")
            return 0
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return 0
        time.sleep(poll)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(allow_abbrev=False, prog="python hpc/logs.py", description=__doc__.split("\n")[0])
    p.add_argument("job", help="job id (1234) or array task (1234_5)")
    p.add_argument("--rank", type=int, help="only this rank")
    p.add_argument("--err", action="store_true", help="stderr files (where the training log lines go)")
    p.add_argument("--follow", "-f", action="store_true", help="keep following, like tail -F")
    p.add_argument("--logdir", help="submitit folder (default: search <scratch>/*/logs)")
    a = p.parse_args(argv)
    if not re.fullmatch(r"\d+(_\d+)?", a.job):
        print(f"error: logs: job must look like 1234 or 1234_5, got {a.job!r}", file=sys.stderr)
        return 2
    try:
        return show(find_logdir(a.job, a.logdir), a.job, a.rank, a.err, a.follow)
    except InputError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
