"""TensorBoard event files: the epoch scalars and the HParams, read back with tensorboard's own loader;
nothing at all without the package."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from dualseg.config import Config, to_dict
from dualseg.train import fit, read_metrics, tblog


def test_epochs_and_hparams_are_read_back_by_tensorboard(make_cfg: Callable[..., Config]) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        from tests.conftest import service_missing

        service_missing("tensorboard not installed (the tensorboard extra)", kind="test extra")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = make_cfg(run_name="tb", epochs=2, hparams={"train.lr": 0.003, "model.base_width": 8, "model.kind": "x"})
    res = fit(cfg)
    folder = res.run_dir / tblog.FOLDER
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(str(folder))
    acc.Reload()
    rows = read_metrics(res.run_dir)
    for key in ("train_loss", "val_loss", "val_miou", "lr"):
        events = acc.Scalars(key)
        assert [e.step for e in events] == [0, 1]
        assert [e.value for e in events] == pytest.approx([r[key] for r in rows], rel=1e-6)
    iou = sorted(t for t in acc.Tags()["scalars"] if t.startswith("val_iou/"))
    assert len(iou) == len(rows[0]["val_iou"]) and not any(t.split("/")[1].isdigit() for t in iou)  # by class name
    content = acc.PluginTagToContent("hparams")
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {h.name for h in exp.hparam_infos} == {"train.lr", "model.base_width", "model.kind"}
    assert {m.name.tag for m in exp.metric_infos} == set(tblog.METRICS)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["train.lr"].number_value == pytest.approx(0.003)
    assert start.hparams["model.kind"].string_value == "x"


def test_plain_run_records_its_config_as_hparams(make_cfg: Callable[..., Config]) -> None:
    hp = tblog.hparams_of(make_cfg(lr=0.002))
    assert hp["train.lr"] == 0.002 and hp["model.base_width"] == 8 and "train.scratch" not in hp


def test_nothing_is_written_without_the_package(make_cfg: Callable[..., Config], tmp_path: Path) -> None:
    """tensorboard hidden (an import of it fails, as when the extra is not installed): the run works,
    no event file, no import error."""
    cfg = make_cfg(run_name="notb", epochs=1)
    (tmp_path / "cfg.json").write_text(json.dumps(to_dict(cfg)))
    script = f"""
import json, sys
sys.modules["tensorboard"] = None  # import tensorboard -> ImportError
from dualseg.config import Config, from_dict
from dualseg.train import fit, tblog
assert not tblog.available()
res = fit(from_dict(Config, json.load(open({str(tmp_path / 'cfg.json')!r}))))
print(res.run_dir, res.epochs_run)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    run_dir, epochs = r.stdout.split()
    assert epochs == "1"
    assert sorted(p.name for p in Path(run_dir).iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]


def test_switched_off_writes_nothing(make_cfg: Callable[..., Config]) -> None:
    res = fit(make_cfg(run_name="off", epochs=1, tensorboard=False))
    assert not (res.run_dir / tblog.FOLDER).exists()
