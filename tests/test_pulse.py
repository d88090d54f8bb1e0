"""PULSE: nearest-neighbour degradation, how low-res images reach LPIPS, and the optimisation."""

import numpy as np
import pytest
import torch
from conftest import tiny
from PIL import Image

from opstylegan import Generator
from opstylegan.inversion.pulse import downsample_nearest, lpips_view, pulse, upsample_nearest
from opstylegan.metrics.lpips import LPIPS


@pytest.fixture(scope="module")
def lpips():
    return LPIPS("vgg")


def test_downsample_nearest_matches_pillow():
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    want = np.asarray(Image.fromarray(img).resize((8, 8), Image.Resampling.NEAREST))
    x = torch.from_numpy(img).permute(2, 0, 1)[None]  # [1, 3, 32, 32]
    got = downsample_nearest(x, 4)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(got, want)
    with pytest.raises(ValueError, match="factor must be one of"):
        downsample_nearest(x, 3)


def test_lpips_view_is_blockwise_and_large_enough():
    x = torch.rand(2, 3, 8, 8)
    v = lpips_view(x)
    assert v.shape == (2, 3, 32, 32)
    assert torch.equal(v[:, :, ::4, ::4], x) and torch.equal(v[:, :, 3::4, 3::4], x)  # 4x4 blocks, no blur
    assert torch.equal(downsample_nearest(upsample_nearest(x, 4), 4), x)
    assert lpips_view(torch.rand(1, 3, 32, 32)).shape[-1] == 32


def test_pulse_matches_the_lowres_target(lpips):
    torch.manual_seed(2)
    G = Generator(tiny(True, channels=3)).eval()
    with torch.no_grad():
        hi = G(G.z_from_seeds([4, 5])).clamp(-1, 1)
    r = pulse(G, hi, 4, "W", steps=6, lpips=lpips)
    assert r.images.shape == (2, 3, 32, 32) and r.downsampled.shape == r.lowres_targets.shape == (2, 3, 8, 8)
    torch.testing.assert_close(r.lowres_targets, downsample_nearest(hi, 4))
    # The reported LPIPS is that of the downsampled result against the target, fed through lpips_view.
    torch.testing.assert_close(lpips(lpips_view(r.downsampled), lpips_view(r.lowres_targets)), r.lpips,
                               atol=1e-5, rtol=0)
    assert bool((r.lpips < r.inversion.lpips_per_step[0]).all())
    assert r.inversion.options.reg_until == 1.0 and r.inversion.options.reg_steps == 6  # pull throughout
    # Giving the low-res target directly is the same problem.
    r2 = pulse(G, r.lowres_targets, 4, "W", lowres=True, steps=6, lpips=lpips)
    torch.testing.assert_close(r2.latents, r.latents)


def test_pulse_input_errors(lpips):
    G = Generator(tiny(False, channels=3))
    with pytest.raises(ValueError, match=r"must have shape \[N, 3, 2, 2\]"):
        pulse(G, torch.zeros(1, 3, 4, 4), 16, lowres=True, lpips=lpips)
    with pytest.raises(ValueError, match="factor must be one of"):
        pulse(G, torch.zeros(1, 3, 32, 32), 5, lpips=lpips)
