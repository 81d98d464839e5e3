"""Atomic writes leave either the old file or the new one, never a partial file or temp litter."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dualseg.errors import InputError
from dualseg.io import (
    atomic_copy,
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    check_output,
    check_writable_dir,
    current_umask,
    read_json,
    staged_dir,
)
from tests.conftest import in_ci

OTHER_UID = 65534  # "nobody": a second user with none of the writer's groups (no passwd entry needed)


def test_write_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.json"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f.json"]


def test_failed_write_keeps_old_content(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def boom(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr("dualseg.io.os.replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_torch_save_round_trip_weights_only(tmp_path: Path) -> None:
    obj = {"w": torch.arange(6.0).reshape(2, 3), "epoch": 3}
    atomic_torch_save(obj, tmp_path / "c.pt")
    back = torch.load(tmp_path / "c.pt", weights_only=True)
    assert back["epoch"] == 3 and torch.equal(back["w"], obj["w"])


def test_read_json(tmp_path: Path) -> None:
    good = tmp_path / "a.json"
    good.write_text('{"train": ["t1"]}')
    assert read_json(good, "splits") == {"train": ["t1"]}
    with pytest.raises(InputError, match=r"^splits: file not found: .*nope\.json$"):
        read_json(tmp_path / "nope.json", "splits")
    bad = tmp_path / "b.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match=r"^pastis: .*b\.json: not valid JSON"):
        read_json(bad, "pastis")


def test_atomic_copy(tmp_path: Path) -> None:
    src = tmp_path / "a.pt"
    src.write_bytes(b"x" * (3 << 20))
    dst = atomic_copy(src, tmp_path / "out" / "b.pt")
    assert dst.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.pt"]
    with pytest.raises(FileNotFoundError):
        atomic_copy(tmp_path / "missing.pt", tmp_path / "out" / "c.pt")
    assert sorted(p.name for p in dst.parent.iterdir()) == ["b.pt"]


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


@pytest.mark.parametrize("mask, file_mode, dir_mode",
                         [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750), (0o077, 0o600, 0o700)])
def test_written_files_get_the_umask_mode(tmp_path: Path, mask: int, file_mode: int, dir_mode: int) -> None:
    """Like an ordinary open(): mkstemp's 0600 would lock a shared dataset or results out of the group."""
    with _umask(mask):
        assert current_umask() == mask
        files = [atomic_write_text(tmp_path / "a.json", "{}"), atomic_write_bytes(tmp_path / "sub" / "b", b"x"),
                 atomic_copy(tmp_path / "a.json", tmp_path / "c.json"), atomic_torch_save({"w": 1}, tmp_path / "d.pt")]
        with staged_dir(tmp_path / "ds", "test", overwrite=False, marker="splits.json") as tmp:
            atomic_write_text(tmp / "splits.json", "{}")
    for f in files + [tmp_path / "ds" / "splits.json"]:
        assert stat.S_IMODE(f.stat().st_mode) == file_mode, f
    for d in (tmp_path / "sub", tmp_path / "ds"):
        assert stat.S_IMODE(d.stat().st_mode) == dir_mode, d


def _as_other_user(*cmd: str) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *cmd],
                          capture_output=True, text=True, timeout=60)


def test_another_user_reads_what_one_user_wrote() -> None:
    """A dataset, stats cache, splits, checkpoint and results written by one user (umask 022) are
    readable by a second uid; a mkstemp-style 0600 file in the same place is not (the check bites)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        msg = "needs root and setpriv to act as a second user"
        if in_ci():
            pytest.fail(f"{msg} (CI=true: the permission test must run)")
        pytest.skip(msg)
    from dualseg.config import SyntheticConfig
    from dualseg.data.synthetic import generate

    base = Path(tempfile.mkdtemp(prefix="dualseg-perm-", dir="/tmp"))  # pytest's tmp dirs are 0700
    try:
        os.chmod(base, 0o755)
        with _umask(0o022):
            generate(base / "data", SyntheticConfig(tiles=3, size=8, s1_dates=2, s2_dates=2))
            atomic_write_text(base / "data" / ".dualseg-stats" / "k.json", "{}")
            atomic_torch_save({"model": {}}, base / "runs" / "t0" / "best.pt")
            atomic_write_text(base / "runs" / "results.json", "{}")
            fd, private = tempfile.mkstemp(dir=base)
            os.close(fd)
        files = [p for p in base.rglob("*") if p.is_file() and str(p) != private]
        assert len(files) > 20  # tiles' chunks, metadata, manifests, splits, caches, checkpoint, results
        r = _as_other_user("sh", "-c", 'for f in "$@"; do cat "$f" > /dev/null || exit 1; done', "sh", *map(str, files))
        assert r.returncode == 0, r.stderr
        r = _as_other_user("find", str(base / "data"), "-name", "*.zarr", "-maxdepth", "1")
        assert r.returncode == 0 and len(r.stdout.split()) == 3, r.stderr
        denied = _as_other_user("cat", private)
        assert denied.returncode != 0 and "Permission denied" in denied.stderr
    finally:
        shutil.rmtree(base)


def test_check_writable_dir_creates_nothing(tmp_path: Path) -> None:
    assert check_writable_dir(tmp_path / "a" / "b", "--scratch") == tmp_path / "a" / "b"
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "f").write_text("")
    with pytest.raises(InputError, match=r"^--scratch: .*/f/x is not a directory \(.*/f is a file\)$"):
        check_writable_dir(tmp_path / "f" / "x", "--scratch")


def test_staged_dir_is_all_or_nothing(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    with (pytest.raises(RuntimeError, match="midway"),
          staged_dir(target, "test", overwrite=False, marker="splits.json") as tmp):
        (tmp / "part").write_text("half")
        raise RuntimeError("midway")
    assert list(tmp_path.iterdir()) == []
    with staged_dir(target, "test", overwrite=False, marker="splits.json") as tmp:
        (tmp / "splits.json").write_text("1")
    with (pytest.raises(InputError, match=r"^test: .*ds already holds a dataset \(splits.json\); pass --overwrite"),
          staged_dir(target, "test", overwrite=False, marker="splits.json")):
        pass
    with staged_dir(target, "test", overwrite=True, marker="splits.json") as tmp:
        (tmp / "splits.json").write_text("2")
    assert (target / "splits.json").read_text() == "2" and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_check_output_refuses_an_input_around_inside_or_linked_and_a_file(tmp_path: Path) -> None:
    src = tmp_path / "in" / "src"
    (src / "a").mkdir(parents=True)
    (tmp_path / "f.txt").write_text("x")
    (tmp_path / "link").symlink_to(src)
    inputs = {"source folder SRC": src, "model file --model": None}
    for out, relation in ((src, "is"), (src / "a" / "new", "is inside"), (tmp_path / "in", "contains"),
                          (tmp_path / "link", "is"), (tmp_path / "link" / "x", "is inside")):
        with pytest.raises(InputError, match=rf"^--out: {out} {relation} the source folder SRC {src}$"):
            check_output(out, inputs)
    with pytest.raises(InputError, match=r"^DST: .*/f.txt is a file, not a folder$"):
        check_output(tmp_path / "f.txt", inputs, "DST")
    assert check_output(tmp_path / "new" / "out", inputs) == tmp_path / "new" / "out"  # a sibling: fine
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt", "in", "link"]  # nothing created


def test_staged_dir_replaces_only_a_folder_with_its_marker(tmp_path: Path) -> None:
    target = tmp_path / "ds"
    target.mkdir()
    (target / "mine.txt").write_text("someone's")
    with (pytest.raises(InputError, match=r"^test: .*ds already holds files not written by this tool \(no own.json\); "
                                          r"it is never replaced \(--force replaces only this tool's own output\)$"),
          staged_dir(target, "test", overwrite=True, marker="own.json", flag="--force")):
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"] and (target / "mine.txt").read_text() == "someone's"
    (target / "own.json").write_text("{}")
    with staged_dir(target, "test", overwrite=True, marker="own.json") as tmp:
        (tmp / "own.json").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == ["own.json"]
