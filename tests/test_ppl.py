"""PPL on tiny random generators with the real LPIPS VGG16 weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from opstylegan.config import preset
from opstylegan.metrics.lpips import LPIPS
from opstylegan.metrics.ppl import perceptual_path_length, slerp
from opstylegan.models.generator import Generator


@pytest.fixture(scope="module")
def lpips(tmp_path_factory: pytest.TempPathFactory) -> LPIPS:
    return LPIPS("vgg", cache_dir=tmp_path_factory.mktemp("weights-cache"))


def _tiny(overparam: bool) -> Generator:
    torch.manual_seed(0)
    return Generator(preset("tiny", img_resolution=32, img_channels=1, overparam=overparam).generator).eval()


@pytest.mark.parametrize("overparam", [True, False])
def test_ppl_finite_positive_deterministic_batch_independent(lpips: LPIPS, overparam: bool) -> None:
    G = _tiny(overparam)
    seen: list[int] = []
    a = perceptual_path_length(G, num_samples=6, batch_size=4, seed=1, sampling="full", lpips=lpips,
                               return_distances=True, progress=lambda done, total: seen.append(done))
    b = perceptual_path_length(G, num_samples=6, batch_size=4, seed=1, sampling="full", lpips=lpips,
                               return_distances=True)
    c = perceptual_path_length(G, num_samples=6, batch_size=6, seed=1, sampling="full", lpips=lpips,
                               return_distances=True)
    d = perceptual_path_length(G, num_samples=6, batch_size=6, seed=2, sampling="full", lpips=lpips,
                               return_distances=True)
    assert seen == [4, 6]
    assert a.distances is not None and c.distances is not None and d.distances is not None
    assert np.isfinite(a.distances).all() and (a.distances > 0).all() and a.ppl > 0
    assert a.ppl == b.ppl  # same seed, same everything
    # Different batch sizes change only float32 rounding, which 1 / epsilon^2 amplifies to ~1e-3.
    np.testing.assert_allclose(a.distances, c.distances, rtol=2e-2)
    assert a.ppl == pytest.approx(c.ppl, rel=1e-2)
    assert not np.allclose(a.distances, d.distances, rtol=0.05)
    assert a.num_kept == 6 and a.to_dict()["space"] == "w" and "distances" not in a.to_dict()


def test_ppl_epsilon_scaling_and_protocol_variants(lpips: LPIPS) -> None:
    G = _tiny(True)
    base = perceptual_path_length(G, num_samples=4, batch_size=4, lpips=lpips, return_distances=True)
    # The path length is a derivative: a 10x larger step gives about the same value, not 100x.
    coarse = perceptual_path_length(G, num_samples=4, batch_size=4, lpips=lpips, epsilon=1e-3,
                                    return_distances=True)
    np.testing.assert_allclose(coarse.distances, base.distances, rtol=0.2)
    for kwargs in ({"space": "z"}, {"crop": True}):
        r = perceptual_path_length(G, num_samples=4, batch_size=4, lpips=lpips, **kwargs)
        assert np.isfinite(r.ppl) and r.ppl > 0 and r.ppl != base.ppl


def test_outliers_are_rejected() -> None:
    G = _tiny(False)
    r = perceptual_path_length(G, num_samples=200, batch_size=200, lpips=_FakeLPIPS(), return_distances=True)
    assert r.distances is not None
    # stylegan2-ada's band: 1st percentile rounded down to a sample, 99th rounded up to a sample.
    lo = np.percentile(r.distances, 1, method="lower")
    hi = np.percentile(r.distances, 99, method="higher")
    kept = r.distances[(r.distances >= lo) & (r.distances <= hi)]
    assert r.num_kept == kept.size == 198
    assert r.ppl == pytest.approx(kept.mean())


class _FakeLPIPS(LPIPS):
    """Distance = squared mean pixel difference (cheap; PPL's bookkeeping is what is tested)."""

    def __init__(self) -> None:  # no weights needed
        torch.nn.Module.__init__(self)
        self.net = "vgg"

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        return (x0 - x1).mean(dim=(1, 2, 3)).square()


def test_slerp() -> None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 4, 5, generator=g), torch.randn(3, 4, 5, generator=g)
    t = torch.tensor([0.0, 0.5, 1.0])
    out = slerp(a, b, t)
    assert out.shape == a.shape
    torch.testing.assert_close(out.flatten(1).norm(dim=1), torch.ones(3))
    torch.testing.assert_close(out[0], a[0] / a[0].norm())
    torch.testing.assert_close(out[2], b[2] / b[2].norm(), atol=1e-5, rtol=1e-5)
    a2, b2 = (a[1] / a[1].norm()).flatten(), (b[1] / b[1].norm()).flatten()
    m = out[1].flatten()
    assert torch.dot(m, a2).item() == pytest.approx(torch.dot(m, b2).item(), abs=1e-5)  # halfway in angle


def test_bad_arguments(lpips: LPIPS, tmp_path: Path) -> None:
    G = _tiny(False)
    with pytest.raises(ValueError, match="space must be 'w' or 'z', got 'W\\+'"):
        perceptual_path_length(G, num_samples=4, space="W+", lpips=lpips)
    with pytest.raises(ValueError, match="sampling must be 'end' or 'full', got 'mid'"):
        perceptual_path_length(G, num_samples=4, sampling="mid", lpips=lpips)
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        perceptual_path_length(G, num_samples=4, epsilon=0.0, lpips=lpips)
    with pytest.raises(ValueError, match="num_samples >= 2"):
        perceptual_path_length(G, num_samples=1, lpips=lpips)
    with pytest.raises(ValueError, match="VGG16"):
        perceptual_path_length(G, num_samples=4, lpips=LPIPS("alex", cache_dir=tmp_path))
