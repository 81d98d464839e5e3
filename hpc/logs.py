"""Show or follow the per-rank logs of a job: ``dualseg-logs 1234_0 --follow --study NAME``.

submitit writes one file per rank, in append mode (a requeued job keeps writing to the same files):
``<array>_<task>_<rank>_log.out/.err`` for an array, ``<job>_<rank>_log.out/.err`` for a plain job (a
search with ``--workers 1``, the evaluation job); ``sbatch/train.sbatch`` names them the same way. ``1234``
shows every task (or every rank of a plain job), ``1234_5`` task 5 of an array only: on a plain job it is
refused, never read as rank 5. The lines are merged into one stream with a ``[rank N]`` prefix
(``[<task> rank N]`` when several array tasks match), ordered by each line's timestamp; ``--follow`` keeps
polling like ``tail -F``: appended lines, files of ranks that appear later, and files that were truncated.
The log folder is the study's (``<scratch>/<study>/logs``, the scratch its launcher recorded), found from
``--study``; ``--where`` prints it (the sbatch templates ask it where to write).
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

from dualseg.errors import DualsegError, InputError, report_error
from hpc.paths import log_dir, resolve_scratch

_TS = re.compile(r"^(\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:[,.]\d+)?)")


@dataclass
class LogFile:
    path: Path
    label: str
    offset: int = 0
    partial: str = ""


def _parse(job: str, name: str, suffix: str) -> tuple[str | None, int] | None:
    """(task, rank) of a log file of ``job`` (``1234``: its plain-job ranks and array tasks; ``1234_5``: one task)."""
    m = re.fullmatch(rf"{re.escape(job)}(?:_(\d+))?_(\d+)_log\.{suffix}", name)
    if m is None or ("_" in job and m.group(1) is not None):  # 1234_5 has no task of its own
        return None
    return m.group(1), int(m.group(2))


def match_files(logdir: Path, job: str, rank: int | None, err: bool) -> dict[Path, str]:
    """Files of ``job`` (``1234``, ``1234_5``) in ``logdir`` -> display label."""
    suffix = "err" if err else "out"
    found: dict[Path, tuple[str | None, int]] = {}
    for p in logdir.iterdir() if logdir.is_dir() else []:
        parsed = _parse(job, p.name, suffix)
        if parsed is not None and (rank is None or parsed[1] == rank):
            found[p] = parsed
    tasks = {t for t, _ in found.values()}
    multi = len(tasks) > 1
    return {p: (f"[{job}_{t} rank {r}]" if multi and t is not None else f"[rank {r}]") for p, (t, r) in found.items()}


def _not_an_array(logdir: Path, job: str) -> None:
    """``1234_5`` of a plain job: its files are ``1234_<rank>_log.*``; say so instead of finding nothing."""
    base, _, task = job.partition("_")
    plain = re.compile(rf"{base}_\d+_log\.(?:out|err)")
    if task and logdir.is_dir() and any(plain.fullmatch(p.name) for p in logdir.iterdir()):
        raise InputError(f"logs: job {base} is not an array (one worker: --workers 1); its ranks' logs are "
                         f"{base}_<rank>_log.out: show them with `dualseg-logs {base}` (--rank N for one rank)")


def study_logdir(study: str, storage: str | None, scratch: str | None) -> Path:
    """The study's log folder: under ``scratch`` when given, else under the scratch its launcher recorded."""
    from hpc.paths import study_scratch
    from hpc.storage import resolve_storage
    from hpc.study import open_study

    if scratch:
        return log_dir(Path(scratch).expanduser().resolve() / study)
    url = resolve_storage(storage, None, resolve_scratch(None) / study / "study.db")
    assert url is not None
    if url.sqlite_path is not None and not url.sqlite_path.is_file():
        raise InputError(f"--storage: not given, $DUALSEG_STORAGE unset and no local study at {url.sqlite_path} "
                         "(pass --storage, --scratch or --logdir)")
    try:
        with open_study(url, study, budget_s=60) as opened:
            recorded = opened.record.scratch
    except InputError as exc:
        raise InputError(url.scrub(str(exc))) from None
    return log_dir(study_scratch(None, recorded) / study)


def find_logdir(job: str, logdir: str | None, study: str | None = None, storage: str | None = None,
                scratch: str | None = None) -> Path:
    """``--logdir``, the study's (``--study``), ``$DUALSEG_LOGDIR``, else the folder under scratch with this job:
    what was typed beats what was exported (for one pickle-free run, perhaps long ago)."""
    if logdir:
        return Path(logdir).expanduser().resolve()
    if study:
        return study_logdir(study, storage, scratch)
    if os.environ.get("DUALSEG_LOGDIR"):
        return Path(os.environ["DUALSEG_LOGDIR"]).expanduser().resolve()
    root = resolve_scratch(scratch)
    for cand in sorted(root.glob("*/logs")):
        if any(cand.glob(f"{job.split('_')[0]}_*_log.*")):
            return cand
    raise InputError(f"logs: no log files of job {job} under {root}/*/logs (pass --study, or --logdir)")


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
        if not files:
            _not_an_array(logdir, job)  # 1234_5 of a plain job: never follow a task that cannot appear
        if not follow:
            if not files:
                raise InputError(f"logs: no {'err' if err else 'out'} files of job {job}"
                                 f"{'' if rank is None else f' rank {rank}'} in {logdir}")
            return 0
        polls += 1
        if max_polls is not None and polls >= max_polls:
            return 0
        time.sleep(poll)


def where(argv: list[str]) -> int:
    """``--where``: print the study's log folder. Takes the worker's and evaluation's own options and
    environment (other options are ignored), so the sbatch templates pass their arguments through."""
    p = argparse.ArgumentParser(prog="dualseg-logs --where", add_help=False, allow_abbrev=False)
    p.add_argument("--study", default=os.environ.get("DUALSEG_STUDY"))
    p.add_argument("--storage", default=os.environ.get("DUALSEG_STORAGE_URL") or None)
    p.add_argument("--scratch", default=os.environ.get("DUALSEG_SCRATCH") or None)
    a, _ = p.parse_known_args(argv)
    try:
        if os.environ.get("DUALSEG_LOGDIR"):
            print(Path(os.environ["DUALSEG_LOGDIR"]).expanduser().resolve())
            return 0
        if not a.study:
            raise InputError("--study: not given and $DUALSEG_STUDY is not set")
        print(study_logdir(a.study, a.storage, a.scratch))
    except DualsegError as exc:
        return report_error(exc)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--where"]:
        return where(argv[1:])
    p = argparse.ArgumentParser(allow_abbrev=False, prog="dualseg-logs", description=__doc__.split("\n")[0],
                                epilog="`python hpc/logs.py` is the same command. `dualseg-logs --where [--study S] "
                                "[--storage URL] [--scratch DIR]` prints the study's log folder.")
    p.add_argument("job", help="array (1234: every task), array task (1234_5) or plain job (1234: every rank)")
    p.add_argument("--rank", type=int, help="only this rank")
    p.add_argument("--err", action="store_true",
                   help="the .err files (warnings, tracebacks, progress bars) instead of the .out files (the log)")
    p.add_argument("--follow", "-f", action="store_true", help="keep following, like tail -F")
    p.add_argument("--study", default=os.environ.get("DUALSEG_STUDY") or None,
                   help="the study whose log folder to read (default $DUALSEG_STUDY)")
    p.add_argument("--storage", default=None, help="its database URL (default $DUALSEG_STORAGE, else the local "
                   "SQLite study <$SCRATCH or ./runs>/<study>/study.db); not needed with --scratch")
    p.add_argument("--scratch", default=None, help="scratch root (default: the one the study recorded; without "
                   "--study: search <scratch>/*/logs, scratch being $SCRATCH or ./runs)")
    p.add_argument("--logdir", help="read this folder instead (default: the --study's, else $DUALSEG_LOGDIR)")
    a = p.parse_args(argv)
    if not re.fullmatch(r"\d+(_\d+)?", a.job):
        print(f"error: logs: job must look like 1234 or 1234_5, got {a.job!r}", file=sys.stderr)
        return 2
    try:
        return show(find_logdir(a.job, a.logdir, a.study, a.storage, a.scratch), a.job, a.rank, a.err, a.follow)
    except DualsegError as exc:
        return report_error(exc)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
