"""fit on tiny real synthetic tiles: learning, exact resume, preemption, callback, bad input."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from dualseg.config import Config
from dualseg.errors import InputError, TrainingError
from dualseg.train import fit, load_checkpoint, majority_baseline, read_metrics, tblog

TB = [tblog.FOLDER] if tblog.available() else []  # event files, with the tensorboard extra


def _losses(history: list[dict]) -> list[float]:
    return [v for h in history for v in (h["train_loss"], h["val_loss"], h["val_miou"])]


def test_learns_above_majority_baseline(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(run_name="learn", epochs=5, patience=0)
    res = fit(cfg)
    assert res.stopped == "completed" and res.epochs_run == 5
    first, best = res.history[0], res.best_metrics
    assert best["val_loss"] < first["val_loss"]
    base = majority_baseline(torch.tensor(best["val_confusion_matrix"]))
    assert best["val_miou"] > base["miou"] + 0.1, (best["val_miou"], base)
    # run dir layout and contents
    names = sorted(p.name for p in res.run_dir.iterdir())
    assert names == ["best.pt", "last.prev.pt", "last.pt", "metrics.jsonl", *TB]
    assert load_checkpoint(res.run_dir / "last.prev.pt")["epoch"] == 4  # the state before the last save
    lines = read_metrics(res.run_dir)
    assert [r["epoch"] for r in lines] == list(range(5))
    assert lines[res.best_epoch]["best"] is True
    state = load_checkpoint(res.run_dir / "last.pt")
    assert state["epoch"] == 5 and state["stopped"] == "completed"
    assert state["config"]["train"]["run_name"] == "learn"
    assert state["data"]["class_weights"].shape == (4,)
    assert set(state["rng"][0]) == {"torch", "cuda", "numpy", "python"}
    best_state = load_checkpoint(res.run_dir / "best.pt")
    assert best_state["epoch"] == res.best_epoch + 1


# should_stop() is polled (log_every=1, 4 steps/epoch, 5 validation batches) at: 1 after the data is
# built, 2 before the first step, 3-6 after each step of epoch 0, 7-10 between validation batches of
# epoch 0, 11 after epoch 0, 12-15 steps of epoch 1, 16-19 its validation, 20 after it.
STOPS = {1: "start-up", 2: "before the first step", 4: "mid-epoch 0", 6: "last step of epoch 0",
         8: "validation of epoch 0", 11: "after epoch 0", 13: "mid-epoch 1", 17: "validation of epoch 1"}


def test_exact_resume_after_interruption_anywhere(make_cfg: Callable[..., Config]) -> None:
    straight = fit(make_cfg(run_name="straight", epochs=2))
    ref = load_checkpoint(straight.run_dir / "last.pt")["model"]
    for stop_at, where in STOPS.items():
        calls = {"n": 0}

        def should_stop(calls: dict[str, int] = calls, stop_at: int = stop_at) -> bool:
            calls["n"] += 1
            return calls["n"] == stop_at

        cfg = make_cfg(run_name=f"split{stop_at}", epochs=2)
        first = fit(cfg, should_stop=should_stop)
        assert first.stopped == "interrupted" and calls["n"] == stop_at, where
        run_dir = first.run_dir
        if stop_at <= 2:  # nothing trained yet: nothing written, no checkpoint to resume
            assert not any(run_dir.glob("*.pt")), where
        else:
            state = load_checkpoint(run_dir / "last.pt")
            done = 4 * state["epoch"] + state["step"]  # training steps kept: none lost
            assert done == {4: 2, 6: 4, 8: 4, 11: 4, 13: 6, 17: 8}[stop_at], (where, done)
        second = fit(cfg)
        assert second.stopped == "completed", where
        assert _losses(second.history) == pytest.approx(_losses(straight.history), abs=1e-6), where
        # metrics.jsonl has each epoch once, across the restart
        assert [r["epoch"] for r in read_metrics(run_dir)] == [0, 1], where
        b = load_checkpoint(run_dir / "last.pt")["model"]
        assert all(torch.allclose(ref[k], b[k], atol=1e-6) for k in ref), where


def test_resume_2_plus_2_epochs_matches_4(make_cfg: Callable[..., Config]) -> None:
    straight = fit(make_cfg(run_name="s4"))
    done: list[int] = []
    first = fit(make_cfg(run_name="s22"), callback=lambda e, m: done.append(e) or False,
                should_stop=lambda: len(done) == 2)
    assert first.epochs_run == 2 and first.stopped == "interrupted"
    second = fit(make_cfg(run_name="s22"), callback=lambda e, m: done.append(e) or False)
    assert done == [0, 1, 2, 3]
    assert _losses(second.history) == pytest.approx(_losses(straight.history), abs=1e-6)
    again = fit(make_cfg(run_name="s22"))  # a finished run returns at once
    assert again.stopped == "completed" and len(again.history) == 4
    fresh = fit(make_cfg(run_name="s22", epochs=1), resume=False)  # starts over, forgets the old run
    assert fresh.epochs_run == 1 and len(read_metrics(fresh.run_dir)) == 1


def test_callback_stops_and_gets_flat_metrics(make_cfg: Callable[..., Config]) -> None:
    seen: list[dict[str, float]] = []

    def cb(epoch: int, metrics: dict[str, float]) -> bool:
        seen.append(metrics)
        return epoch == 1

    res = fit(make_cfg(run_name="cb"), callback=cb, overrides={"train.lr": 1e-3, "model.dropout": 0.0})
    assert res.stopped == "callback" and res.epochs_run == 2
    stored = load_checkpoint(res.run_dir / "last.pt")["config"]
    assert stored["train"]["lr"] == 1e-3 and stored["model"]["dropout"] == 0.0
    assert {"val_loss", "val_miou", "val_oa", "train_loss", "epoch", "lr"} <= set(seen[0])
    assert all(isinstance(v, float) for m in seen for v in m.values())


def test_early_stopping(make_cfg: Callable[..., Config]) -> None:
    res = fit(make_cfg(run_name="es", epochs=30, patience=1, lr=0.02, warmup_epochs=0))
    assert res.stopped == "early_stopping"
    assert res.epochs_run == res.best_epoch + 2 < 30


def test_nan_loss_stops_before_checkpoint(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(run_name="nan", lr=1e30, log_every=50)
    with pytest.raises(TrainingError, match="non-finite loss in epoch 0"):
        fit(cfg)
    run_dir = Path(cfg.train.scratch) / "nan"  # type: ignore[arg-type]
    assert not (run_dir / "last.pt").exists() and not (run_dir / "best.pt").exists()


def test_unwritable_scratch_fails_before_training(make_cfg: Callable[..., Config], tmp_path: Path) -> None:
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    with pytest.raises(InputError, match=f"run directory {blocker}/x is not writable"):
        fit(make_cfg(run_name="x", scratch=str(blocker)))


def test_checkpoint_of_another_shape_is_named(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(run_name="shape", epochs=1)
    fit(cfg)
    cfg.model.base_width = 16
    with pytest.raises(TrainingError, match=r"parameter \S+ has shape"):
        fit(cfg)


def test_bad_train_options_named(make_cfg: Callable[..., Config]) -> None:
    with pytest.raises(InputError, match="train.batch_size"):
        fit(make_cfg(batch_size=0))
    with pytest.raises(InputError, match="train.run_name"):
        fit(make_cfg(run_name="../up"))
    with pytest.raises(InputError, match="data.patch_size"):  # not a multiple of 2**(levels-1)
        fit(make_cfg(run_name="ps"), overrides={"data.patch_size": 15})


def test_metrics_jsonl_is_valid_json(make_cfg: Callable[..., Config]) -> None:
    res = fit(make_cfg(run_name="js", epochs=1))
    line = (res.run_dir / "metrics.jsonl").read_text().splitlines()[0]
    rec = json.loads(line)
    assert len(rec["val_confusion_matrix"]) == 4 and len(rec["val_iou"]) == 4


def test_truncated_last_pt_resumes_from_the_previous_state(
    make_cfg: Callable[..., Config], caplog: pytest.LogCaptureFixture
) -> None:
    straight = fit(make_cfg(run_name="ref", epochs=3))
    cfg = make_cfg(run_name="dmg", epochs=3)
    done: list[int] = []
    fit(cfg, callback=lambda e, m: done.append(e) or False, should_stop=lambda: len(done) == 2)
    last, prev = straight.run_dir.parent / "dmg" / "last.pt", straight.run_dir.parent / "dmg" / "last.prev.pt"
    assert load_checkpoint(prev)["epoch"] == 1 and load_checkpoint(last)["epoch"] == 2
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # damaged while the job waited
    best = last.with_name("best.pt")
    # the newest loadable state: best.pt if epoch 1 was the best so far (saved with the lost last.pt)
    newest, older = (best, prev) if load_checkpoint(best)["epoch"] == 2 else (prev, best)
    with caplog.at_level("WARNING"):
        second = fit(cfg)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [(f"checkpoint: skipped last.pt (not a dualseg checkpoint (truncated or corrupt)), "
                         f"{older.name} (older); resuming from {newest}")]
    assert second.stopped == "completed"  # at most epoch 1 re-run (the one lost), nothing more
    assert _losses(second.history) == pytest.approx(_losses(straight.history), abs=1e-6)
    assert [r["epoch"] for r in read_metrics(second.run_dir)] == [0, 1, 2]
    # the damaged last.pt was overwritten, never rotated over the good last.prev.pt
    assert load_checkpoint(last)["epoch"] == 3 and load_checkpoint(prev)["epoch"] in (1, 2)


def test_falls_back_to_best_pt_then_fails_only_when_nothing_loads(make_cfg: Callable[..., Config]) -> None:
    cfg = make_cfg(run_name="fb", epochs=3)
    done: list[int] = []
    res = fit(cfg, callback=lambda e, m: done.append(e) or False, should_stop=lambda: len(done) == 2)
    best_epochs = load_checkpoint(res.run_dir / "best.pt")["epoch"]
    for name in ("last.pt", "last.prev.pt"):
        (res.run_dir / name).write_bytes(b"\0" * 100)
    calls: list[int] = []
    stopped = fit(cfg, should_stop=lambda: calls.append(1) or len(calls) == 2)  # stop before the first step
    assert stopped.stopped == "interrupted" and stopped.epochs_run == best_epochs
    assert len(read_metrics(res.run_dir)) == best_epochs  # metrics truncated to the best.pt state
    (res.run_dir / "best.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match=r"^checkpoint: no loadable checkpoint \(last.pt \(not a dualseg "
                                            r"checkpoint \(truncated or corrupt\)\); last.prev.pt .*; best.pt .*\): "):
        fit(cfg)
    assert sorted(p.name for p in res.run_dir.glob("*.pt")) == ["best.pt", "last.prev.pt", "last.pt"]  # kept
    fresh = fit(cfg, resume=False)  # the way out the error suggests nothing about: start over
    assert fresh.stopped == "completed" and [r["epoch"] for r in read_metrics(res.run_dir)] == [0, 1, 2]


def test_monitor_chooses_best_pt_and_direction(make_cfg: Callable[..., Config]) -> None:
    res = fit(make_cfg(run_name="miou", epochs=3, monitor="val_miou", patience=0))
    mious = [h["val_miou"] for h in res.history]
    assert res.monitor == "val_miou" and res.best_epoch == mious.index(max(mious))
    assert res.best_value == max(mious) and res.best_val_loss == res.history[res.best_epoch]["val_loss"]
    assert load_checkpoint(res.run_dir / "best.pt")["epoch"] == res.best_epoch + 1
    running = [max(mious[: i + 1]) for i in range(3)]
    assert [h["best"] for h in res.history] == [i == 0 or running[i] > running[i - 1] for i in range(3)]
    with pytest.raises(InputError, match="train.monitor=val_loss but .* chose best.pt on val_miou"):
        fit(make_cfg(run_name="miou", epochs=4))
    with pytest.raises(InputError, match="train.monitor: must be one of val_loss, val_miou, val_oa"):
        make_cfg(monitor="miou")


def test_without_validation_trains_exactly_its_epochs_and_keeps_the_last_model(
        make_cfg: Callable[..., Config]) -> None:
    """train.validate: false (hpc.final's refit on train+val): no val split is read, no early stopping even with
    patience 1, every epoch's model is best.pt, and an interrupted run resumes exactly."""
    from dualseg.data.splits import read_splits

    splits = read_splits(Path(make_cfg().data.root) / "splits.json")

    def cfg(name: str) -> Config:
        c = make_cfg(run_name=name, epochs=3, patience=1, lr=0.05, validate=False)
        c.data.train_tiles, c.data.val_tiles = splits["train"] + splits["val"], []  # no validation split at all
        return c

    seen: list[dict[str, float]] = []
    res = fit(cfg("nv"), callback=lambda e, m: seen.append(m) or False)
    assert (res.stopped, res.epochs_run, res.best_epoch, res.monitor) == ("completed", 3, 2, "train_loss")
    assert res.best_value == res.history[-1]["train_loss"] and math.isnan(res.best_val_loss)
    assert [set(m) for m in seen] == [{"epoch", "train_loss", "lr"}] * 3
    assert not any(k.startswith("val_") for h in read_metrics(res.run_dir) for k in h)
    best, last = load_checkpoint(res.run_dir / "best.pt"), load_checkpoint(res.run_dir / "last.pt")
    assert best["epoch"] == last["epoch"] == 3
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])
    assert best["config"]["train"]["validate"] is False
    done: list[int] = []
    first = fit(cfg("nv-resumed"), callback=lambda e, m: done.append(e) or False, should_stop=lambda: len(done) == 1)
    assert first.stopped == "interrupted" and first.epochs_run == 1
    second = fit(cfg("nv-resumed"))
    assert second.stopped == "completed" and second.best_epoch == 2
    assert [h["train_loss"] for h in second.history] == pytest.approx([h["train_loss"] for h in res.history], abs=1e-6)
