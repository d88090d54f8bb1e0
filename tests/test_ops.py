"""Numerical checks of the resampling ops and the modulated convolution (incl. double backward)."""

import math

import pytest
import torch
import torch.nn.functional as F

from opstylegan.nn.modconv import modulated_conv2d
from opstylegan.nn.resample import conv2d_resample, downsample2d, setup_filter, upfirdn2d, upsample2d

f64 = dict(dtype=torch.float64)


def test_filter_is_normalised_separable():
    f = setup_filter([1, 3, 3, 1])
    assert f.shape == (4, 4)
    assert torch.allclose(f.sum(), torch.tensor(1.0))
    assert torch.allclose(f, f.T)


def test_upsample_downsample_shapes_and_mean():
    x = torch.randn(2, 3, 8, 8)
    f = setup_filter()
    up = upsample2d(x, f)
    assert up.shape == (2, 3, 16, 16)
    down = downsample2d(x, f)
    assert down.shape == (2, 3, 4, 4)
    # A constant image stays constant away from the borders (gain keeps the mean).
    c = torch.ones(1, 1, 8, 8)
    assert torch.allclose(upsample2d(c, f)[..., 2:-2, 2:-2], torch.ones(1, 1, 12, 12))
    assert torch.allclose(downsample2d(c, f)[..., 1:-1, 1:-1], torch.ones(1, 1, 2, 2))


def test_upfirdn2d_matches_direct_formula():
    # Upsampling by 2 then a 1-tap filter is plain zero insertion.
    x = torch.arange(4.0).reshape(1, 1, 2, 2)
    y = upfirdn2d(x, torch.ones(1, 1), up=2)
    expect = torch.tensor([[0, 0, 1, 0], [0, 0, 0, 0], [2, 0, 3, 0], [0, 0, 0, 0]], dtype=torch.float32)
    assert torch.equal(y[0, 0], expect)
    # Negative padding crops.
    z = upfirdn2d(torch.randn(1, 1, 6, 6), torch.ones(1, 1), padding=(-1, -2, -1, -2))
    assert z.shape == (1, 1, 3, 3)


def test_conv2d_resample_up_equals_upsample_then_conv():
    """Transposed conv + FIR == zero-insert, FIR, conv (the definition), for a 3x3 kernel."""
    torch.manual_seed(1)
    x = torch.randn(2, 4, 5, 5, **f64)
    w = torch.randn(6, 4, 3, 3, **f64)
    f = setup_filter().double()
    fast = conv2d_resample(x, w, f, up=2, padding=1)
    ref = F.conv2d(upsample2d(x, f), w, padding=1)
    assert fast.shape == ref.shape == (2, 6, 10, 10)
    # Same operator in the interior; only the one-pixel border differs (the fused op never zero-pads the
    # upsampled image before the 3x3 conv, like stylegan2-ada's conv2d_resample).
    assert torch.allclose(fast[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1], atol=1e-10)
    assert not torch.allclose(fast, ref, atol=1e-3)


def test_conv2d_resample_down_shape():
    x = torch.randn(2, 4, 16, 16)
    w = torch.randn(6, 4, 3, 3)
    assert conv2d_resample(x, w, setup_filter(), down=2, padding=1).shape == (2, 6, 8, 8)
    assert conv2d_resample(x, torch.randn(6, 4, 1, 1), setup_filter(), down=2).shape == (2, 6, 8, 8)


def _modconv_inputs(b=2, i=3, o=4, h=5, rows=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, i, h, h, generator=g, **f64)
    w = torch.randn(o, i, 3, 3, generator=g, **f64)
    s = torch.randn(b, rows or o, i, generator=g, **f64) + 2
    return x, w, s


def _reference_modconv(x, weight, styles, demodulate=True, up=1, f=None):
    """Textbook formula, one sample at a time, no tricks."""
    out = []
    for b in range(x.shape[0]):
        wm = weight * styles[b][:, :, None, None]  # [O, I, k, k] (styles [O|1, I] broadcasts)
        if demodulate:
            wm = wm / torch.sqrt(wm.square().sum(dim=[1, 2, 3], keepdim=True) + 1e-8)
        out.append(conv2d_resample(x[b:b + 1], wm, f, up=up, padding=1))
    return torch.cat(out)


@pytest.mark.parametrize("up", [1, 2])
@pytest.mark.parametrize("demodulate", [True, False])
def test_modconv_matrix_matches_reference(up, demodulate):
    x, w, s = _modconv_inputs()
    f = setup_filter().double()
    got = modulated_conv2d(x, w, s, demodulate=demodulate, up=up, padding=1, resample_filter=f)
    assert torch.allclose(got, _reference_modconv(x, w, s, demodulate, up, f), atol=1e-10)


@pytest.mark.parametrize("up", [1, 2])
def test_classic_style_is_rank1_case(up):
    """[B, I] styles == the [B, O, I] matrix with every row equal, fused and unfused."""
    x, w, s = _modconv_inputs(rows=1)
    f = setup_filter().double()
    vec = s[:, 0]
    mat = s.expand(-1, w.shape[0], -1)
    ref = modulated_conv2d(x, w, mat, up=up, padding=1, resample_filter=f)
    for fused in (True, False):
        got = modulated_conv2d(x, w, vec, up=up, padding=1, resample_filter=f, fused=fused)
        assert torch.allclose(got, ref, atol=1e-10), fused


def test_demodulation_normalises_output_rows():
    x, w, s = _modconv_inputs()
    x = torch.randn(64, 3, 16, 16, **f64)
    s = s[:1].expand(64, -1, -1)
    y = modulated_conv2d(x, w, s, padding=1)
    # Unit-variance inputs -> unit-variance outputs per channel (interior, away from the zero padding).
    std = y[..., 1:-1, 1:-1].std(dim=[0, 2, 3])
    assert torch.allclose(std, torch.ones_like(std), atol=0.08)


def test_modconv_style_matrix_needs_fused():
    x, w, s = _modconv_inputs()
    with pytest.raises(ValueError, match="rank-1"):
        modulated_conv2d(x, w, s, fused=False)
    with pytest.raises(ValueError, match="styles must be"):
        modulated_conv2d(x, w, s[:, :3, :2])


@pytest.mark.parametrize("up", [1, 2])
def test_modconv_gradcheck_and_gradgradcheck(up):
    x, w, s = _modconv_inputs(b=2, i=2, o=3, h=4)
    f = setup_filter().double()
    for t in (x, w, s):
        t.requires_grad_(True)
    fn = lambda x, w, s: modulated_conv2d(x, w, s, up=up, padding=1, resample_filter=f)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, s))
    assert torch.autograd.gradgradcheck(fn, (x, w, s))


@pytest.mark.parametrize("op", ["up", "down", "conv_down"])
def test_resample_gradcheck_and_gradgradcheck(op):
    f = setup_filter().double()
    x = torch.randn(1, 2, 6, 6, **f64, requires_grad=True)
    w = torch.randn(3, 2, 3, 3, **f64, requires_grad=True)
    fns = {
        "up": (lambda x: upsample2d(x, f), (x,)),
        "down": (lambda x: downsample2d(x, f), (x,)),
        "conv_down": (lambda x, w: conv2d_resample(x, w, f, down=2, padding=1), (x, w)),
    }
    fn, args = fns[op]
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


def test_equalized_lr_gain():
    from opstylegan.nn.layers import FullyConnectedLayer

    fc = FullyConnectedLayer(256, 128, lr_multiplier=0.01)
    y = fc(torch.randn(4096, 256))
    # Runtime scaling keeps unit variance whatever the lr multiplier.
    assert math.isclose(y.std().item(), 1.0, rel_tol=0.05)
