"""hpc/logs.py: per-rank files merged with [rank N] prefixes, followed like tail -F."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path

from hpc.logs import match_files, show


def _line(ts: str, msg: str) -> str:
    return f"2026-01-01 00:00:{ts},000 [rank x] INFO t: {msg}\n"


def test_merge_orders_by_timestamp_and_labels_ranks(tmp_path: Path, hpc_tools) -> None:
    (tmp_path / "42_0_log.out").write_text(_line("01", "a") + _line("03", "c"))
    (tmp_path / "42_1_log.out").write_text(_line("02", "b") + "traceback line without time\n")
    (tmp_path / "43_0_log.out").write_text(_line("00", "other job"))
    out = io.StringIO()
    show(tmp_path, "42", out=out)
    lines = out.getvalue().splitlines()
    assert [ln.split()[0:2] for ln in lines] == [["[rank", "0]"], ["[rank", "1]"], ["[rank", "1]"], ["[rank", "0]"]]
    assert [ln.rsplit(" ", 1)[-1] for ln in lines] == ["a", "b", "time", "c"]
    r = hpc_tools.run_cli("logs.py", "42", "--rank", "1", "--logdir", str(tmp_path))
    assert r.returncode == 0 and r.stdout.count("[rank 1]") == 2 and "[rank 0]" not in r.stdout


def test_array_tasks_are_labelled_and_err_selects_stderr(tmp_path: Path) -> None:
    for task in (0, 1):
        (tmp_path / f"7_{task}_0_log.out").write_text(_line("01", f"task {task}"))
        (tmp_path / f"7_{task}_0_log.err").write_text(_line("01", f"err {task}"))
    assert set(match_files(tmp_path, "7", None, False).values()) == {"[7_0 rank 0]", "[7_1 rank 0]"}
    assert set(match_files(tmp_path, "7_1", None, True).values()) == {"[rank 0]"}


def test_follow_picks_up_appends_new_ranks_and_truncation(tmp_path: Path) -> None:
    first = tmp_path / "9_0_log.out"
    first.write_text(_line("01", "start"))
    out = io.StringIO()

    def writer() -> None:
        time.sleep(0.3)
        with open(first, "a") as fh:  # a requeued job appends to the same file
            fh.write(_line("02", "after requeue"))
            fh.write("2026-01-01 00:00:03,000 partial")  # no newline yet: must not be printed half
        time.sleep(0.3)
        (tmp_path / "9_1_log.out").write_text(_line("04", "rank one appears"))
        with open(first, "a") as fh:
            fh.write(" line done\n")
        time.sleep(0.3)
        first.write_text(_line("05", "truncated and rewritten"))

    t = threading.Thread(target=writer)
    t.start()
    show(tmp_path, "9", follow=True, poll=0.05, out=out, max_polls=30)
    t.join()
    text = out.getvalue()
    assert "[rank 0] " + _line("02", "after requeue").strip() in text
    assert "[rank 0] 2026-01-01 00:00:03,000 partial line done" in text and "partial\n" not in text
    assert "[rank 1] " + _line("04", "rank one appears").strip() in text
    assert "truncated and rewritten" in text


def test_bad_job_and_missing_files_exit_2(tmp_path: Path, hpc_tools) -> None:
    r = hpc_tools.run_cli("logs.py", "12;rm", "--logdir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.startswith("error: logs: job must look like")
    r = hpc_tools.run_cli("logs.py", "12", "--logdir", str(tmp_path))
    assert r.returncode == 2 and r.stderr.strip() == f"error: logs: no out files of job 12 in {tmp_path}"


def test_a_plain_job_shows_its_ranks_and_a_task_of_it_is_refused_not_read_as_a_rank(tmp_path: Path, hpc_tools) -> None:
    """--workers 1: no array, the files are <job>_<rank>_log.out; 55_1 must never show rank 1 as task 1."""
    (tmp_path / "55_0_log.out").write_text(_line("01", "rank zero"))
    (tmp_path / "55_1_log.out").write_text(_line("02", "rank one"))
    assert set(match_files(tmp_path, "55", None, False).values()) == {"[rank 0]", "[rank 1]"}
    assert match_files(tmp_path, "55_1", None, False) == {}
    r = hpc_tools.run_cli("logs.py", "55_1", "--logdir", str(tmp_path))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: logs: job 55 is not an array") and "dualseg-logs 55" in r.stderr
    r = hpc_tools.run_cli("logs.py", "55", "--rank", "1", "--logdir", str(tmp_path))
    assert r.returncode == 0 and r.stdout.strip().endswith("rank one") and "rank zero" not in r.stdout


def test_the_log_folder_comes_from_the_study(tmp_path: Path, hpc_tools) -> None:
    """--study finds <scratch>/<study>/logs through the scratch the launcher recorded: no --logdir needed."""
    scratch, elsewhere = tmp_path / "scratch", tmp_path / "elsewhere"
    elsewhere.mkdir()
    url = f"sqlite:///{tmp_path / 's.db'}"
    r = hpc_tools.run_cli("launch.py", "--config", str(hpc_tools.tiny), "--scratch", str(scratch), "--storage", url,
                          "--study", "lg", "--executor", "local", "--set", f"data.root={tmp_path / 'data'}",
                          "--prepare-only")
    assert r.returncode == 0, r.stderr
    (scratch / "lg" / "logs" / "66_0_log.out").write_text(_line("01", "from the study's folder"))
    env = {"DUALSEG_STORAGE": url, "SCRATCH": str(elsewhere)}  # $SCRATCH points elsewhere: the record wins
    r = hpc_tools.run_cli("logs.py", "66", "--study", "lg", env=env)
    assert r.returncode == 0 and "from the study's folder" in r.stdout, r.stderr
    (elsewhere / "66_0_log.out").write_text(_line("01", "from an exported folder"))
    r = hpc_tools.run_cli("logs.py", "66", "--study", "lg", env={**env, "DUALSEG_LOGDIR": str(elsewhere)})
    assert r.returncode == 0 and "from the study's folder" in r.stdout, r.stderr  # typed beats exported
    r = hpc_tools.run_cli("logs.py", "66", env={**env, "DUALSEG_LOGDIR": str(elsewhere)})
    assert r.returncode == 0 and "from an exported folder" in r.stdout, r.stderr
    r = hpc_tools.run_cli("logs.py", "--where", "--study", "lg", "--trials", "3", env=env)  # a worker's options pass
    assert r.returncode == 0 and r.stdout.strip() == str(scratch / "lg" / "logs"), r.stderr
    r = hpc_tools.run_cli("logs.py", "--where", env={"DUALSEG_STUDY": "", "DUALSEG_LOGDIR": ""})
    assert r.returncode == 2 and r.stderr.strip() == "error: --study: not given and $DUALSEG_STUDY is not set"


def test_help_says_where_the_training_lines_are(hpc_tools) -> None:
    r = hpc_tools.run_cli("logs.py", "--help")
    assert r.returncode == 0
    err_help = " ".join(r.stdout.split("\n  --err", 1)[1].split("\n  --follow")[0].split())
    assert "warnings, tracebacks" in err_help and "training" not in err_help
