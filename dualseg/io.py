"""Atomic file writes: temp file in the target directory, fsync, rename, fsync the directory.

A reader (or a requeued job after a crash) therefore sees either the old file or the new one,
never a half-written checkpoint, stats cache or results file. Files get the mode an ordinary
``open()`` would give under the process umask (0644 under umask 022), not ``mkstemp``'s 0600: a
dataset, stats cache or results file written by one member of a group must be readable by the next.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

from dualseg.errors import InputError


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """The process umask, read without changing it (``os.umask`` is a process-wide write, racy
    under threads): ``/proc/self/status`` on Linux, else set-and-restore."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def probe_writable(path: str | Path) -> tuple[Path, OSError | None]:
    """Whether ``path`` is (or can be created as) a writable directory, creating nothing.

    Probes the deepest existing ancestor with a temp file removed at once (its 0600 mode is never
    seen); returns that ancestor and the error, None when writable.
    """
    probe_dir = Path(path)
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        if not probe_dir.is_dir():
            raise NotADirectoryError(20, "Not a directory")
        fd, probe = tempfile.mkstemp(prefix=".dualseg-write-test.", dir=probe_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        return probe_dir, exc
    return probe_dir, None


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Prove ``path`` is (or can be created as) a writable directory, creating nothing; else one
    :class:`InputError` line naming ``what`` (the option, e.g. ``--scratch``) and the path."""
    path = Path(path)
    probe_dir, error = probe_writable(path)
    if not probe_dir.is_dir():
        raise InputError(f"{what}: {path} is not a directory ({probe_dir} is a file)")
    if error is not None:
        where = "" if probe_dir == path else f" ({probe_dir} cannot hold a new folder)"
        raise InputError(f"{what}: {path} is not writable{where}: {error.strerror or type(error).__name__}")
    return path


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[BinaryIO]:
    """Yield a temp file beside ``path``; on success fsync it, rename it over ``path``, fsync the dir."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp's 0600 would lock out the group
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably."""
    path = Path(path)
    with _atomic_file(path) as fh:
        fh.write(data)
    return path


def atomic_copy(src: str | Path, dst: str | Path) -> Path:
    """Copy ``src`` to ``dst`` atomically and durably (checkpoints handed between trials/results)."""
    dst = Path(dst)
    with _atomic_file(dst) as out, open(src, "rb") as inp:
        shutil.copyfileobj(inp, out, 1 << 20)
    return dst


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    """``torch.save`` to ``path`` atomically (serialised in memory first, then written once)."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path, what: str) -> Any:
    """Parse a JSON file the user gave us; a missing or malformed file is one ``InputError`` line."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{what}: file not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{what}: {path}: not valid JSON ({exc})") from None


def replace_dir(staged: Path, target: Path) -> None:
    """Put the finished folder ``staged`` in place of ``target``: readers see the old folder or the new one,
    never a mix (an existing target is moved aside first, then deleted)."""
    if target.exists():
        trash = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.replace(target, trash)
        os.replace(staged, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staged, target)


def _same(a: Path, b: Path) -> bool:
    """The same file or folder: equal resolved paths, or the same inode (a bind mount, a hard link)."""
    if a == b:
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_output(out: str | Path, inputs: Mapping[str, str | Path | None], what: str = "--out") -> Path:
    """Refuse an output folder that is, contains or lies inside one of the writer's ``inputs``, or is a file.

    ``inputs`` maps a description naming the option (``"tiles folder --tiles"``) to its path; ``None``
    entries are skipped. Symlinks are resolved and inodes compared, so a link or bind mount to the
    input is caught too. One :class:`InputError` line naming ``what``; creates nothing. Every writer
    that takes an output folder calls this before writing anything: an input is never an output.
    """
    given = Path(out)
    o = given.expanduser().resolve()
    for name, path in inputs.items():
        if path is None:
            continue
        i = Path(path).expanduser().resolve()
        if _same(o, i):
            raise InputError(f"{what}: {given} is the {name} {path}")
        if any(_same(a, i) for a in o.parents):
            raise InputError(f"{what}: {given} is inside the {name} {path}")
        if any(_same(a, o) for a in i.parents):
            raise InputError(f"{what}: {given} contains the {name} {path}")
    if o.exists() and not o.is_dir():
        raise InputError(f"{what}: {given} is a file, not a folder")
    return o


@contextlib.contextmanager
def staged_dir(target: str | Path, what: str, *, overwrite: bool, marker: str,
               inputs: Mapping[str, str | Path | None] | None = None, flag: str = "--overwrite") -> Iterator[Path]:
    """Build a whole folder (a dataset) at a temp path beside ``target``, renamed into place at the end.

    A failure or interrupt removes the temp folder: ``target`` is either untouched or complete,
    never half-written. ``target`` must not be, contain or lie inside one of ``inputs``
    (:func:`check_output`). An existing non-empty ``target`` is replaced only with ``overwrite``
    (the error names the CLI's own ``flag``), and only when it holds ``marker``, the file by which
    the writer marks a folder as its own output: never a folder someone else wrote.
    """
    target = check_output(target, inputs or {}, what)  # symlinks resolved: replace what a link points at
    if target.is_dir() and any(target.iterdir()):
        held = "a dataset (splits.json)" if (target / "splits.json").exists() else "files"
        if not (target / marker).exists():
            raise InputError(f"{what}: {target} already holds {held} not written by this tool (no {marker}); "
                             f"it is never replaced ({flag} replaces only this tool's own output)")
        if not overwrite:
            raise InputError(f"{what}: {target} already holds {held}; pass {flag} to replace it")
    check_writable_dir(target.parent, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(target.parent)
