"""Masked mean, date encoding and L-TAE attention: masks respected, weights normalised, heads grouped."""

from __future__ import annotations

import torch

from dualseg.model.temporal import LTAE, TemporalAggregator, aggregate, date_encoding, masked_mean


def _seq(b=2, t=5, c=8, h=4, w=4, seed=0):
    return torch.randn(b, t, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_masked_mean_matches_mean_of_valid_dates_and_is_zero_when_all_padded():
    x = _seq()
    pad = torch.tensor([[False, True, False, True, True], [True] * 5])
    out = masked_mean(x, pad)
    assert torch.allclose(out[0], x[0, [0, 2]].mean(0), atol=1e-6)
    assert torch.equal(out[1], torch.zeros_like(out[1]))


def test_date_encoding_is_sinusoidal_and_distinguishes_days():
    days = torch.tensor([[0, 1, 100]])
    enc = date_encoding(days, 8)
    assert enc.shape == (1, 3, 8)
    assert torch.allclose(enc[0, 0], torch.tensor([0.0] * 4 + [1.0] * 4))
    assert torch.allclose(enc[0, 1, 0], torch.sin(torch.tensor(1.0)))
    assert (enc[0, 1] - enc[0, 2]).abs().max() > 0.1
    assert date_encoding(days, 7).shape == (1, 3, 7)


def test_attention_sums_to_one_over_valid_dates_and_zero_on_padding():
    torch.manual_seed(0)
    ltae = LTAE(channels=8, n_heads=2, d_k=4).eval()
    x = _seq()
    pad = torch.tensor([[False, False, True, False, True], [True] * 5])
    days = torch.arange(5).expand(2, 5) * 10
    attn = ltae.attention(x, pad, days)
    assert attn.shape == (2, 5, 2, 4, 4) and attn.dtype == torch.float32
    assert torch.allclose(attn[0].sum(0), torch.ones(2, 4, 4), atol=1e-6)
    assert attn[0, [2, 4]].abs().max() == 0
    assert attn[1].abs().max() == 0  # all padded: zero weights, not NaN
    assert (attn[0, 0] - attn[0, 1]).abs().max() > 0  # not a plain mean


def test_attention_in_float32_under_autocast():
    torch.manual_seed(0)
    ltae = LTAE(channels=8, n_heads=2, d_k=4)
    x = _seq()
    pad = torch.zeros(2, 5, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        attn = ltae.attention(x, pad, torch.arange(5).expand(2, 5))
    assert attn.dtype == torch.float32
    assert torch.allclose(attn.sum(1), torch.ones(2, 2, 4, 4), atol=1e-5)


def test_aggregate_uses_one_head_per_channel_group():
    x = _seq(b=1, t=3, c=4, h=2, w=2)
    attn = torch.zeros(1, 3, 2, 2, 2)
    attn[:, 0, 0] = 1.0  # head 0 (channels 0-1) takes date 0
    attn[:, 2, 1] = 1.0  # head 1 (channels 2-3) takes date 2
    out = aggregate(x, attn)
    assert torch.equal(out[0, :2], x[0, 0, :2])
    assert torch.equal(out[0, 2:], x[0, 2, 2:])


def test_aggregator_upsampled_skip_attention_keeps_padding_out():
    torch.manual_seed(0)
    agg = TemporalAggregator([4, 8], "ltae", n_heads=2, d_k=4, dropout=0.0).eval()
    pad = torch.tensor([[False, False, True]])
    feats = [torch.randn(1, 3, 4, 8, 8), torch.randn(1, 3, 8, 4, 4)]
    out = agg(feats, pad, None)
    changed = [f.clone() for f in feats]
    for f in changed:
        f[:, 2] = 1e4  # garbage in the padded date at every level
    out2 = agg(changed, pad, None)
    assert [o.shape for o in out] == [(1, 4, 8, 8), (1, 8, 4, 4)]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(out, out2))
