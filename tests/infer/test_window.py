"""Sliding windows: full coverage, smooth weights, no seams (constant input -> constant map)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from dualseg.data.tile import Stream, Tile, open_tile
from dualseg.data.write import write_tile
from dualseg.errors import InputError
from dualseg.infer import InputSpec, blend_weight, load_exported, load_input, spec_of, tile_logits, to_map, windows


def constant_tile(model_bands: tuple[list[str], list[str]], h: int = 80, w: int = 72, value: float = 0.3,
                  crs: str | None = None, transform: list[float] | None = None) -> Tile:
    s1b, s2b = model_bands
    t1 = np.arange(19000, 19080, 10, dtype=np.int32)
    t2 = np.arange(19003, 19083, 10, dtype=np.int32)
    return Tile(
        s1=Stream({b: np.full((len(t1), h, w), -12.0 * value, np.float32) for b in s1b}, t1),
        s2=Stream({b: np.full((len(t2), h, w), 1000.0 * value, np.float32) for b in s2b}, t2),
        labels=np.zeros((h, w), np.int16), class_names=["a"], crs=crs, transform=transform,
    )


@pytest.mark.parametrize(("size", "patch", "overlap"), [(64, 32, 0.25), (70, 32, 0.5), (32, 32, 0.0), (45, 16, 0.9)])
def test_windows_cover_every_pixel(size: int, patch: int, overlap: float) -> None:
    cover = np.zeros((size, size + 3), int)
    corners = windows(size, size + 3, patch, overlap)
    for y, x in corners:
        assert 0 <= y <= size - patch and 0 <= x <= size + 3 - patch
        cover[y : y + patch, x : x + patch] += 1
    assert cover.min() >= 1
    if overlap == 0.0 and size % patch == 0:  # the validation grid: disjoint windows along y
        assert sorted({y for y, _ in corners}) == list(range(0, size, patch))


def test_blend_weight_is_smooth_symmetric_and_floored() -> None:
    w = blend_weight(32)
    assert torch.equal(w, w.T) and torch.equal(w, w.flip(0))
    assert float(w.min()) == pytest.approx(0.1**2, rel=0.05) and float(w.max()) <= 1.0
    assert float(w[16, 16]) > 0.99 and float(w[0, 16]) < 0.2  # centre counts most, borders least but > 0
    with pytest.raises(InputError, match="--overlap"):
        windows(64, 64, 32, 1.0)
    with pytest.raises(InputError, match="larger than the tile"):
        windows(20, 64, 32, 0.0)


class Pointwise(nn.Module):
    """Logits that depend on each pixel's own inputs only: any seam would be the blending's fault."""

    def __init__(self, c2: int, k: int) -> None:
        super().__init__()
        self.head = nn.Conv2d(c2, k, 1)

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, s1_pad: torch.Tensor, s2_pad: torch.Tensor,
                s1_doy: torch.Tensor | None = None, s2_doy: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(s2.mean(dim=2))


def test_blending_reproduces_a_position_independent_model_exactly(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    s2b = ["B02", "B03", "B04"]
    tile = constant_tile((["VV"], s2b), h=50, w=61)
    for b in s2b:
        tile.s2.bands[b] = rng.uniform(0, 2000, tile.s2.bands[b].shape).astype(np.float32)
    info = open_tile(write_tile(tmp_path / "r.zarr", tile))
    spec = InputSpec(mean={"s1": np.zeros(1), "s2": np.full(3, 1000.0)},
                     std={"s1": np.ones(1), "s2": np.full(3, 500.0)})
    inp = load_input(info, spec)
    net = Pointwise(3, 5).eval()
    with torch.no_grad():
        direct = net(None, torch.from_numpy(inp.prepared("s2")[0])[None], None, None)[0]  # whole tile at once
    for overlap in (0.0, 0.25, 0.6):
        blended = tile_logits(net, inp, spec, patch=16, overlap=overlap, batch_size=4, amp=False)
        torch.testing.assert_close(blended, direct, rtol=1e-5, atol=1e-5)


def test_constant_input_tile_gives_a_constant_map(tmp_path: Path) -> None:
    tile = constant_tile((["VV"], ["B02", "B03", "B04"]), h=70, w=45)
    info = open_tile(write_tile(tmp_path / "flat.zarr", tile))
    spec = InputSpec(mean={"s1": np.zeros(1), "s2": np.full(3, 100.0)}, std={"s1": np.ones(1), "s2": np.full(3, 50.0)})
    inp = load_input(info, spec)
    torch.manual_seed(0)
    for overlap in (0.0, 0.3, 0.75):
        logits = tile_logits(Pointwise(3, 4).eval(), inp, spec, patch=16, overlap=overlap, batch_size=5, amp=False)
        classes, conf, _ = to_map(logits, inp.has_input(), 255)
        assert np.unique(classes).size == 1 and np.ptp(conf) < 1e-6
        assert float((logits - logits[:, :1, :1]).abs().max()) < 1e-5


def test_blending_removes_the_seams_of_the_real_model(trained: dict[str, Path], tmp_path: Path) -> None:
    """A strided U-Net on a constant tile is not constant per pixel (zero padding at window borders,
    upsampling); side by side windows (overlap 0) leave a jump at their border, blending smooths it."""
    m = load_exported(trained["slim"])
    info = open_tile(write_tile(tmp_path / "flat.zarr", constant_tile((m.s1_bands, m.s2_bands))))
    spec, net = spec_of(m), m.build()
    inp = load_input(info, spec)

    def max_jump(overlap: float) -> float:
        lg = tile_logits(net, inp, spec, patch=m.patch_size, overlap=overlap, amp=False)[:, 8:-8, 8:-8]
        return float((lg[:, :, 1:] - lg[:, :, :-1]).abs().max())

    assert max_jump(0.5) < 0.5 * max_jump(0.0)


class Recorder(nn.Module):
    """Keeps every window batch it is given (prepared model inputs); logits are zeros."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k, self.seen = k, []

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, s1_pad: torch.Tensor, s2_pad: torch.Tensor,
                s1_doy: torch.Tensor | None = None, s2_doy: torch.Tensor | None = None) -> torch.Tensor:
        self.seen.append((s1, s2, s1_pad, s2_pad))
        return torch.zeros((s2.shape[0], self.k, *s2.shape[-2:]))


@pytest.mark.parametrize("version", [1, 2])
def test_windows_are_prepared_like_the_tile_and_has_input_is_the_old_mask(tmp_path: Path, version: int) -> None:
    """Windows (stored pixels, prepared per batch on the device) carry the whole tile's model inputs;
    a date is padding where the window has no valid pixel; has_input is the former CPU mask."""
    from dualseg.data.read import read_stream

    rng = np.random.default_rng(1)
    tile = constant_tile((["VV", "VH"], ["B02", "B03"]), h=24, w=20)
    tile.s2.bands["B02"] = rng.uniform(1, 2000, tile.s2.bands["B02"].shape).round().astype(np.float32)
    tile.s2.bands["B03"][:, :8, :8] = np.nan  # no S2 input in the corner at any date
    tile.s1.bands["VV"][:, :6, :6] = np.nan  # nor S1: no input at all there
    tile.s2 = Stream(tile.s2.bands, tile.s2.time, rng.random(tile.s2.bands["B02"].shape) < 0.3)
    info = open_tile(write_tile(tmp_path / "m.zarr", tile, version=version))
    spec = InputSpec(mean={"s1": np.full(2, -4.0), "s2": np.full(2, 900.0)},
                     std={"s1": np.ones(2), "s2": np.full(2, 400.0)})
    inp = load_input(info, spec)
    assert inp.raw["s2"].dtype == (np.uint16 if version == 2 else np.float32)
    net = Recorder(2)
    tile_logits(net, inp, spec, patch=8, overlap=0.0, batch_size=4, amp=False)
    whole = {k: inp.prepared(k) for k in ("s1", "s2")}
    corners = windows(24, 20, 8, 0.0)
    got = [w for b in net.seen for w in zip(*b)]
    assert len(got) == len(corners)
    for (y, x), (s1, s2, s1_pad, s2_pad) in zip(corners, got):
        for key, z, pad in (("s1", s1, s1_pad), ("s2", s2, s2_pad)):
            data, valid = whole[key]
            np.testing.assert_array_equal(z.numpy(), data[..., y : y + 8, x : x + 8])
            np.testing.assert_array_equal(pad.numpy(), ~valid[:, y : y + 8, x : x + 8].any(axis=(1, 2)))
    ref = np.zeros((24, 20), dtype=bool)
    for key in ("s1", "s2"):
        values, cloud = read_stream(info, key)  # the CPU path's mask: every band finite, not cloudy
        ok = np.isfinite(values).all(axis=0) & (True if cloud is None else ~cloud)
        ref |= ok.any(axis=0)
    np.testing.assert_array_equal(inp.has_input(), ref)
    assert not ref[:6, :6].any() and ref[8:, 8:].all()
