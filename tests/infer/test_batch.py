"""to_device: a raw loader batch is moved as stored and prepared there; an unused stream is not moved."""

from __future__ import annotations

import torch

from dualseg.data.prepare import prepare
from dualseg.infer.batch import to_device


def _raw_batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    band = [1.0, -1000.0, 0.0, float("inf"), 1500.0, 1 / 800.0]  # prepare.COEF: S2's v2 encoding
    coef = {k: torch.tensor([band] * c) for k, c in (("s1", 2), ("s2", 3))}
    return {
        "s1": torch.randint(0, 3000, (2, 2, 3, 8, 8), generator=g).to(torch.int16),
        "s2": torch.randint(0, 3000, (2, 3, 4, 8, 8), generator=g).to(torch.uint16),
        "s1_coef": torch.stack([coef["s1"]] * 2), "s2_coef": torch.stack([coef["s2"]] * 2),
        "s1_present": torch.ones(2, 3, dtype=torch.bool), "s2_present": torch.tensor([[1, 1, 1, 0]] * 2).bool(),
        "s1_doy": torch.arange(1, 4).repeat(2, 1), "s2_doy": torch.arange(1, 5).repeat(2, 1),
        "labels": torch.randint(0, 3, (2, 8, 8), generator=g), "aug": torch.tensor([[1, 0], [0, 1]]),
    }


def test_a_raw_batch_is_prepared_on_the_way_and_unused_streams_stay_behind() -> None:
    raw = _raw_batch()
    got = to_device(raw, torch.device("cpu"), streams="s2")
    want = prepare(raw, streams="s2")
    assert not any(k.startswith("s1") for k in got)
    assert set(got) == set(want) and got["s2"].dtype == torch.float32
    for k in want:
        assert torch.equal(got[k], want[k]), k
    assert got["s2_pad"].tolist() == [[False, False, False, True]] * 2  # the padded date; raw 0 = nodata DN
    assert torch.equal(got["labels"][0], torch.rot90(raw["labels"][0], 1, dims=(-2, -1)))
    assert torch.equal(got["labels"][1], torch.flip(raw["labels"][1], dims=(-1,)))
