"""Validation under bf16 autocast: metrics and loss come from the float32 logits of the float32 head."""

from __future__ import annotations

import torch

from dualseg.config import ModelConfig
from dualseg.model import build_model
from dualseg.train.metrics import confusion_matrix
from dualseg.train.steps import evaluate_batches, weighted_ce_sums

K = 4


def _batches(n: int = 3) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [{"s1": torch.randn(2, 2, 3, 16, 16, generator=g), "s2": torch.randn(2, 3, 4, 16, 16, generator=g),
             "s1_pad": torch.zeros(2, 3, dtype=torch.bool), "s2_pad": torch.zeros(2, 4, dtype=torch.bool),
             "labels": torch.randint(0, K, (2, 16, 16), generator=g)} for _ in range(n)]


def _model(margin: float = 0.0) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4, dropout=0.0), 2, 3, K)
    with torch.no_grad():  # margin > 0: the head's bias decides the class of every pixel by a wide margin
        model.head.bias.copy_(torch.arange(K, dtype=torch.float32) * margin)
        model.head.weight.mul_(0.0 if margin else 1.0)
    return model


def _evaluate(model: torch.nn.Module, batches: list, bf16: bool) -> tuple[torch.Tensor, float]:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return evaluate_batches(model, batches, num_classes=K, weight=None, ignore_index=255,
                                device=torch.device("cpu"))


def test_metrics_and_loss_are_those_of_the_float32_logits_under_bf16() -> None:
    model, batches = _model(), _batches()
    cm, loss = _evaluate(model, batches, bf16=True)
    want_cm, ls, ws = torch.zeros(K, K, dtype=torch.int64), 0.0, 0.0
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for b in batches:
            logits = model(b["s1"], b["s2"], b["s1_pad"], b["s2_pad"])
            assert logits.dtype == torch.float32
            want_cm += confusion_matrix(logits.argmax(1), b["labels"], K, 255)
            s, w = weighted_ce_sums(logits, b["labels"], None, 255)
            ls, ws = ls + float(s), ws + float(w)
    assert torch.equal(cm, want_cm)
    assert abs(loss - ls / ws) <= 1e-6 * abs(loss)


def test_a_wide_margin_gives_the_fp32_paths_metrics_exactly() -> None:
    """Where bf16 cannot flip an argmax (margins far above its rounding), bf16 and fp32 agree exactly."""
    model, batches = _model(margin=4.0), _batches()
    cm16, loss16 = _evaluate(model, batches, bf16=True)
    cm32, loss32 = _evaluate(model, batches, bf16=False)
    assert torch.equal(cm16, cm32) and cm32[:, K - 1].sum() == cm32.sum()
    assert loss16 == loss32  # the float32 head sees only its bias: the same logits, the same loss


def _loader_batches(tmp_path, n: int = 3) -> tuple[list[dict[str, torch.Tensor]], int]:
    """Collated loader items (stored integers, format version 2) of generated tiles with clouds and holes."""
    import numpy as np

    from dualseg.config import SyntheticConfig
    from dualseg.data.batch import collate
    from dualseg.data.dataset import TileDataset
    from dualseg.data.synthetic import make_tile
    from dualseg.data.tile import open_tile
    from dualseg.data.write import write_tile

    syn = SyntheticConfig(tiles=2, size=32, classes=K, s1_dates=3, s2_dates=4, parcel_size=6)
    infos = [open_tile(write_tile(tmp_path / f"t{i}.zarr", make_tile(syn, i), version=2)) for i in range(2)]
    mean = {"s1": np.array([-12.0, -18.0]), "s2": np.full(10, 1500.0)}
    std = {"s1": np.array([3.0, 3.0]), "s2": np.full(10, 900.0)}
    ds = TileDataset(infos, mean, std, patch_size=16, train=True, samples_per_tile=3, seed=1, augment=True)
    batches = [collate([ds[2 * b], ds[2 * b + 1]]) for b in range(n)]
    assert batches[0]["s2"].dtype == torch.uint16
    return batches, infos[0].num_classes


def test_raw_batches_train_and_evaluate_like_prepared_ones(tmp_path) -> None:
    """The step prepares a raw batch on its device: the same losses and metrics as the batch
    prepared beforehand (tests/data/test_prepare: prepared = the former CPU path's inputs)."""
    from dualseg.data.prepare import prepare
    from dualseg.train.steps import train_epoch

    raw, k = _loader_batches(tmp_path)
    ready = [prepare(b) for b in raw]
    cpu = torch.device("cpu")
    out = {}
    for name, batches in (("raw", raw), ("ready", ready)):
        torch.manual_seed(0)
        model = build_model(ModelConfig(levels=2, base_width=8, n_heads=2, d_k=4, dropout=0.0), 2, 10, k)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        progress = train_epoch(model, batches, opt, None, weight=None, ignore_index=255, device=cpu,
                               amp=False, sync_ranks=False)
        cm, loss = evaluate_batches(model, batches, num_classes=k, weight=None, ignore_index=255, device=cpu,
                                    amp=False)
        out[name] = float(progress.loss_sum), progress.steps, cm, loss
    assert out["raw"][1] == out["ready"][1] == len(raw)
    assert abs(out["raw"][0] - out["ready"][0]) <= 1e-6 * abs(out["ready"][0])
    assert torch.equal(out["raw"][2], out["ready"][2]) and out["raw"][2].sum() > 0
    assert abs(out["raw"][3] - out["ready"][3]) <= 1e-6 * abs(out["ready"][3])
