"""DualStreamUNet3D: shapes, padding invariance, every option combination, gradients, determinism."""

from __future__ import annotations

import itertools

import pytest
import torch

from dualseg.errors import InputError

TOL = 1e-5


def _run(model, batch):
    return model(**batch)


def test_output_shape_and_unequal_lengths(tiny):
    model = tiny.model().eval()
    batch = tiny.batch(b=3, t1=2, t2=7)
    out = _run(model, batch)
    assert out.shape == (3, tiny.K, tiny.H, tiny.H)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


# Padding invariance: late fusion and early fusion, both temporal modes, per-date and 3-date kernels.
INVARIANCE_CASES = [
    dict(temporal=t, fusion=f, temporal_kernel=k)
    for t, f, k in itertools.product(("ltae", "mean"), ("concat", "early"), (1, 3))
]


@pytest.mark.parametrize("opts", INVARIANCE_CASES, ids=lambda o: "-".join(map(str, o.values())))
def test_appended_padding_does_not_change_logits(tiny, opts):
    model = tiny.model(**opts).eval()
    batch = tiny.batch(b=2, t1=3, t2=4)
    with torch.no_grad():
        ref = _run(model, batch)
        out = _run(model, tiny.append_padding(batch, n1=2, n2=5))  # NaN-filled padded frames
    assert torch.isfinite(out).all()
    assert (out - ref).abs().max().item() <= TOL


@pytest.mark.parametrize("opts", INVARIANCE_CASES, ids=lambda o: "-".join(map(str, o.values())))
def test_batch_with_different_lengths_matches_samples_alone(tiny, opts):
    """Sample 0 has T1=4,T2=5; sample 1 has T1=2,T2=3 padded to the batch max: each equals its solo run."""
    model = tiny.model(**opts).eval()
    long = tiny.batch(b=1, t1=4, t2=5, seed=1)
    short = tiny.batch(b=1, t1=2, t2=3, seed=2)
    padded_short = tiny.append_padding(short, n1=2, n2=2, fill=7.0)
    batch = {k: torch.cat([long[k], padded_short[k]]) for k in long}
    with torch.no_grad():
        out = _run(model, batch)
        ref_long = _run(model, long)
        ref_short = _run(model, short)
    assert (out[0] - ref_long[0]).abs().max().item() <= TOL
    assert (out[1] - ref_short[0]).abs().max().item() <= TOL


@pytest.mark.parametrize("opts", INVARIANCE_CASES, ids=lambda o: "-".join(map(str, o.values())))
def test_all_but_one_padded_equals_single_date(tiny, opts):
    model = tiny.model(**opts).eval()
    single = tiny.batch(b=1, t1=1, t2=1, seed=3)
    padded = tiny.append_padding(single, n1=3, n2=5, fill=-3.0)
    with torch.no_grad():
        ref = _run(model, single)
        out = _run(model, padded)
    assert (out - ref).abs().max().item() <= TOL


def test_invalid_date_in_the_middle_is_ignored_with_per_date_kernels(tiny):
    """temporal_kernel=1: an unusable (e.g. cloudy) date anywhere in the series has no influence."""
    model = tiny.model().eval()
    batch = tiny.batch(b=1, t1=3, t2=5, seed=4)
    keep = [0, 1, 3, 4]
    removed = dict(batch, s2=batch["s2"][:, :, keep], s2_pad=batch["s2_pad"][:, keep], s2_doy=batch["s2_doy"][:, keep])
    marked = dict(batch, s2=batch["s2"].clone(), s2_pad=batch["s2_pad"].clone())
    marked["s2_pad"][:, 2] = True
    marked["s2"][:, :, 2] = 1e6
    with torch.no_grad():
        assert (_run(model, marked) - _run(model, removed)).abs().max().item() <= TOL


def test_fully_padded_stream_gives_finite_output_and_gradients(tiny):
    model = tiny.model().train()
    batch = tiny.batch(b=2, t1=3, t2=4)
    batch["s2_pad"][1] = True  # e.g. every optical date of this patch is cloudy
    out = _run(model, batch)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


STREAMS_CASES = list(itertools.product(("ltae", "mean"), ("concat", "sum", "early"), ("both", "s1", "s2")))


@pytest.mark.parametrize("temporal,fusion,streams", STREAMS_CASES)
def test_every_combination_trains(tiny, temporal, fusion, streams):
    model = tiny.model(temporal=temporal, fusion=fusion, streams=streams).train()
    batch = tiny.batch(b=2, t1=3, t2=4)
    batch["s2_pad"][0, -1] = True
    if streams == "s1":
        batch.update(s2=None, s2_pad=None, s2_doy=None)
    if streams == "s2":
        batch.update(s1=None, s1_pad=None, s1_doy=None)
    out = _run(model, batch)
    assert out.shape == (2, tiny.K, tiny.H, tiny.H)
    torch.nn.functional.cross_entropy(out, torch.randint(0, tiny.K, (2, tiny.H, tiny.H))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"parameters without gradient (DDP would need find_unused_parameters): {missing}"
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


@pytest.mark.parametrize("kt", [1, 3])
@pytest.mark.parametrize("fusion", ["concat", "sum", "early"])
def test_gradient_reaches_both_inputs_but_not_padded_frames(tiny, fusion, kt):
    model = tiny.model(fusion=fusion, temporal_kernel=kt).train()
    batch = tiny.batch(b=2, t1=3, t2=4)
    batch["s1_pad"][0, -1] = True
    batch["s2_pad"][1, 1] = True
    batch["s1"].requires_grad_(True)
    batch["s2"].requires_grad_(True)
    _run(model, batch).square().mean().backward()
    g1, g2 = batch["s1"].grad, batch["s2"].grad
    assert g1[~batch["s1_pad"].unsqueeze(1).expand_as(g1[..., 0, 0])].abs().sum() > 0
    assert g2.abs().sum() > 0
    assert g1[0, :, -1].abs().max() == 0 and g2[1, :, 1].abs().max() == 0
    if fusion != "early":
        for enc in (model.enc_s1, model.enc_s2):
            assert sum(p.grad.abs().sum() for p in enc.parameters()) > 0


def test_single_stream_ignores_the_other_stream(tiny):
    model = tiny.model(streams="s2").eval()
    batch = tiny.batch(b=1)
    with torch.no_grad():
        ref = _run(model, batch)
        out = _run(model, dict(batch, s1=None, s1_pad=None, s1_doy=None))
    assert torch.equal(ref, out)
    assert model.enc_s1 is None


def test_deterministic_on_cpu(tiny):
    batch = tiny.batch(b=2)
    batch["s2_pad"][0, 1:3] = True  # exercises the packed encoder path too
    results = []
    for _ in range(2):
        model = tiny.model(seed=5).train()
        torch.manual_seed(11)  # dropout
        out = _run(model, batch)
        out.sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in model.parameters()]))
    assert torch.equal(results[0][0], results[1][0])
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))


def test_runs_under_bf16_autocast(tiny):
    model = tiny.model().eval()
    batch = tiny.batch(b=1)
    with torch.no_grad():
        ref = _run(model, batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _run(model, tiny.append_padding(batch, 2, 2))
    assert torch.isfinite(out).all()
    assert torch.allclose(out.float(), ref, atol=0.1, rtol=0.1)


def test_dates_change_attention_output(tiny):
    """The date encoding is used: shifting the acquisition days changes the logits (L-TAE only)."""
    batch = tiny.batch(b=1)
    shifted = dict(batch, s2_doy=batch["s2_doy"] + 40)
    for temporal, changes in (("ltae", True), ("mean", False)):
        model = tiny.model(temporal=temporal).eval()
        with torch.no_grad():
            diff = (_run(model, batch) - _run(model, shifted)).abs().max().item()
        assert (diff > 1e-4) == changes, (temporal, diff)


@pytest.mark.parametrize(
    "change,needle",
    [
        (dict(s1=torch.zeros(1, 2, 3, 18, 18), s2=torch.zeros(1, 3, 4, 18, 18)), "model.levels"),
        (dict(s2=torch.zeros(1, 5, 4, 16, 16)), "s2 has 5 channels"),
        (dict(s1_pad=torch.zeros(1, 3)), "s1_pad must be a bool"),
        (dict(s2_pad=torch.zeros(1, 2, dtype=torch.bool)), "s2_pad"),
        (dict(s1=torch.zeros(1, 2, 16, 16)), "s1 must be (B, C, T, H, W)"),
        (dict(s2=None), "s2 and s2_pad are required"),
        (dict(s2=torch.zeros(1, 3, 4, 32, 32)), "differ in batch or patch size"),
        (dict(s2_doy=torch.zeros(1, 7, dtype=torch.int64)), "s2_doy"),
        (dict(s1=torch.zeros(1, 2, 3, 16, 16, dtype=torch.float64)), "s1 has dtype torch.float64"),
    ],
)
def test_bad_inputs_raise_input_error(tiny, change, needle):
    model = tiny.model()
    batch = tiny.batch(b=1, t1=3, t2=4)
    batch.update(change)
    if "s1" in change and change["s1"].shape[-1] == 18:
        batch.update(s1_pad=torch.zeros(1, 3, dtype=torch.bool), s2_pad=torch.zeros(1, 4, dtype=torch.bool))
    with pytest.raises(InputError, match=None) as exc:
        _run(model, batch)
    assert needle in str(exc.value)


def test_packed_encoder_equals_dense_encoder(tiny):
    """Skipping padded frames (packing) is exact: same logits and parameter gradients as dense."""
    batch = tiny.batch(b=3, t1=4, t2=6)
    batch["s1_pad"][0, 2:] = True
    batch["s2_pad"][1, ::2] = True
    batch["s2_pad"][2] = True
    results = []
    for pack_below in (1.0, 0.0):
        model = tiny.model(seed=3, dropout=0.0).train()
        for enc in (model.enc_s1, model.enc_s2):
            enc.pack_below = pack_below
        out = _run(model, batch)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad for p in model.parameters()]))
    (out_p, g_p), (out_d, g_d) = results
    assert (out_p - out_d).abs().max().item() <= TOL
    assert all(torch.allclose(a, b, atol=1e-5, rtol=1e-4) for a, b in zip(g_p, g_d))


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_other_depths(tiny, levels):
    model = tiny.model(levels=levels).eval()
    with torch.no_grad():
        out = _run(model, tiny.batch(b=1, t1=2, t2=3))
    assert out.shape == (1, tiny.K, tiny.H, tiny.H)
    assert len(model.decoder) == levels - 1


def test_logits_are_float32_under_bf16_autocast(tiny):
    """The classifier runs in float32 on the (bf16) decoder features: the logits are not bf16-rounded."""
    model = tiny.model(dropout=0.0).eval()
    seen = {}
    model.decoder[-1].register_forward_hook(lambda mod, args, out: seen.update(y=out))  # the head's input
    batch = tiny.batch()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = _run(model, batch)
    assert out.dtype == torch.float32 and seen["y"].dtype == torch.bfloat16  # the body ran in bf16
    with torch.no_grad():  # the 1x1 convolution of those features, to float32 precision (float64 reference)
        want = torch.nn.functional.conv2d(seen["y"].double(), model.head.weight.double(), model.head.bias.double())
    assert (out.double() - want).abs().max().item() <= 1e-5
    assert not torch.equal(out, out.to(torch.bfloat16).float())  # a bf16 head would have rounded these
    with torch.no_grad():
        ref = _run(model, batch)
    assert (out - ref).abs().max().item() < 0.2  # the body ran in bf16: close, not equal
