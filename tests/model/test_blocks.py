"""Frame-layout convolutions equal true 3D convolutions; per-frame normalisation keeps frames apart."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dualseg.model.blocks import FrameConv, FrameConvNormAct, UpBlock2d, norm_groups


def test_norm_groups_divides_channels():
    assert [norm_groups(c) for c in (1, 2, 3, 6, 8, 64)] == [1, 2, 1, 2, 4, 4]


def test_frame_conv_equals_conv3d_for_both_kernel_depths():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3, 8, 8)  # (B, T, C, H, W)
    for kt in (1, 3):
        for stride in (1, 2):
            conv = FrameConv(3, 4, kt=kt, stride=stride, bias=True)
            ref = F.conv3d(x.transpose(1, 2), conv.conv.weight, conv.conv.bias,
                           stride=(1, stride, stride), padding=(kt // 2, 1, 1)).transpose(1, 2)
            out = conv(x)
            assert out.shape == (2, 5, 4, 8 // stride, 8 // stride)
            assert out.is_contiguous()
            assert torch.allclose(out, ref, atol=1e-5)


def test_per_frame_norm_does_not_mix_frames_or_samples():
    torch.manual_seed(0)
    block = FrameConvNormAct(3, 8)
    x = torch.randn(2, 4, 3, 8, 8)
    y = x.clone()
    y[1] = 50.0 * torch.randn(4, 3, 8, 8)  # another sample
    y[0, 3] = -20.0  # another frame of the same sample
    a, b = block(x), block(y)
    assert torch.allclose(a[0, :3], b[0, :3], atol=1e-6)


def test_up_block_doubles_resolution():
    block = UpBlock2d(16, 8, 8, dropout=0.2)
    out = block(torch.randn(2, 16, 4, 4), torch.randn(2, 8, 8, 8))
    assert out.shape == (2, 8, 8, 8)
