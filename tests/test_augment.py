"""Tests for the ADA augmentation pipe and its p controller (opstylegan.training.augment)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from opstylegan.training.augment import (
    AUGMENT_PRESETS,
    AdaptiveAugment,
    AugmentPipe,
    AugmentSpec,
    _blit,
    _resample,
    _rotate2d,
    _translate2d,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(b: int, c: int, h: int, w: int, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.rand(b, c, h, w, generator=_gen(seed), dtype=dtype) * 2 - 1)


def _smooth(b: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Band-limited test images (bicubic upsampling of 8x8 noise), like natural images at low frequency."""
    return F.interpolate(torch.randn(b, c, 8, 8, generator=_gen(seed)), size=(h, w), mode="bicubic",
                         align_corners=False)


# --------------------------------------------------------------------------------------------- AugmentPipe

@pytest.mark.parametrize("preset", sorted(AUGMENT_PRESETS))
def test_p_zero_is_exact_identity(preset: str) -> None:
    x = _images(4, 3, 16, 16)
    assert torch.equal(AugmentPipe(preset, p=0.0)(x, _gen(1)), x)


def test_all_multipliers_zero_is_exact_identity_at_p_one() -> None:
    x = _images(4, 3, 16, 16)
    assert torch.equal(AugmentPipe(AugmentSpec(), p=1.0)(x, _gen(1)), x)


def test_deterministic_for_a_seed() -> None:
    pipe = AugmentPipe("bgc", p=0.8)
    x = _images(6, 3, 16, 16)
    a, b = pipe(x, _gen(7)), pipe(x, _gen(7))
    assert torch.equal(a, b)
    assert not torch.allclose(a, pipe(x, _gen(8)))
    torch.manual_seed(3)
    g1 = pipe(x)
    torch.manual_seed(3)
    assert torch.equal(g1, pipe(x))  # the global RNG works the same way


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [(16, 16), (24, 32), (17, 15), (64, 64)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shape_and_dtype_kept(channels: int, size: tuple[int, int], dtype: torch.dtype) -> None:
    x = _images(3, channels, *size, dtype=dtype)
    y = AugmentPipe("bgc", p=1.0)(x, _gen(0))
    assert y.shape == x.shape and y.dtype == dtype
    assert torch.isfinite(y).all()
    assert not torch.allclose(y, x)


def test_xflip_only_mirrors_exactly() -> None:
    x = _images(32, 3, 16, 12)
    y = AugmentPipe(AugmentSpec(xflip=1.0), p=1.0)(x, _gen(0))
    same = [torch.equal(y[i], x[i]) for i in range(32)]
    flipped = [torch.equal(y[i], x[i].flip(-1)) for i in range(32)]
    assert all(s != f for s, f in zip(same, flipped, strict=True))  # each image is exactly one of the two
    assert 4 <= sum(flipped) <= 28  # a flip happens half of the time when the augmentation is selected


def test_rotate90_only_is_an_exact_quarter_turn() -> None:
    x = _images(32, 1, 12, 12)
    y = AugmentPipe(AugmentSpec(rotate90=1.0), p=1.0)(x, _gen(0))
    turns = []
    for i in range(32):
        k = [k for k in range(4) if torch.equal(y[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(k) == 1
        turns.append(k[0])
    assert set(turns) == {0, 1, 2, 3}


def test_probability_p_per_augmentation() -> None:
    # xflip selected with probability p, then a flip half of the time: P(flipped) = p / 2.
    x = _images(400, 1, 4, 4)
    y = AugmentPipe(AugmentSpec(xflip=1.0), p=0.5)(x, _gen(0))
    flipped = (y != x).flatten(1).any(dim=1).float().mean().item()
    assert 0.17 < flipped < 0.33  # 0.25 +- 3.5 binomial standard deviations


def test_integer_moves_agree_between_exact_blit_and_resampler() -> None:
    # The two execution paths share one coordinate convention: an integer shift gives the same image.
    pipe = AugmentPipe("bgc")
    x = _images(2, 3, 20, 16)
    g_inv = _translate2d(torch.tensor([-3.0, 2.0]), torch.tensor([1.0, -2.0]), 2)
    cx, cy = (16 - 1) / 2, (20 - 1) / 2
    pix = _translate2d(cx, cy, 2) @ g_inv @ _translate2d(-cx, -cy, 2)
    torch.testing.assert_close(_resample(x, g_inv, pipe.hz_geom), _blit(x, pix), atol=1e-4, rtol=0)
    torch.testing.assert_close(_resample(x, torch.eye(3, dtype=torch.float64).repeat(2, 1, 1), pipe.hz_geom),
                               x, atol=1e-4, rtol=0)
    # A quarter turn agrees too on band-limited images (the asymmetric wavelet blurs white noise a bit).
    s = _smooth(1, 1, 32, 32)
    g_inv = _rotate2d(torch.tensor([math.pi / 2]), 1)
    c = 31 / 2
    pix = (_translate2d(c, c, 1) @ g_inv @ _translate2d(-c, -c, 1)).round()
    assert (_resample(s, g_inv, pipe.hz_geom) - _blit(s, pix)).abs().max() < 0.05 * s.abs().max()
    assert torch.equal(_blit(s, pix), torch.rot90(s, 1, dims=(2, 3)))


def test_translation_direction_and_subpixel_accuracy() -> None:
    # On a horizontal ramp x(i, j) = j, moving the content right by 0.5 px gives j - 0.5 inside.
    ramp = torch.arange(24, dtype=torch.float64).repeat(1, 1, 24, 1)
    g_inv = _translate2d(-0.5, 0.0, 1)  # output pixel (x, y) reads input (x - 0.5, y)
    y = _resample(ramp, g_inv, AugmentPipe("bgc").hz_geom)
    torch.testing.assert_close(y[..., 6:-6, 6:-6], ramp[..., 6:-6, 6:-6] - 0.5, atol=1e-3, rtol=0)


def test_color_with_zero_strengths_is_identity() -> None:
    spec = AugmentSpec.from_preset("c", lumaflip=0.0, brightness_std=0.0, contrast_std=0.0, hue_max=0.0,
                                   saturation_std=0.0)
    x = _images(8, 3, 8, 8)
    y = AugmentPipe(spec, p=1.0)(x, _gen(0))
    torch.testing.assert_close(y, x, atol=1e-6, rtol=0)
    torch.testing.assert_close(y.mean(dim=(1, 2, 3)), x.mean(dim=(1, 2, 3)), atol=1e-6, rtol=0)


def test_hue_and_saturation_keep_luma_and_change_colour() -> None:
    x = _images(8, 3, 8, 8)
    y = AugmentPipe(AugmentSpec(hue=1.0, saturation=1.0), p=1.0)(x, _gen(0))
    torch.testing.assert_close(y.mean(dim=1), x.mean(dim=1), atol=1e-5, rtol=0)  # per-pixel luma kept
    assert (y - x).abs().max() > 0.1


def test_brightness_is_one_offset_per_image() -> None:
    x = _images(8, 3, 8, 8)
    d = AugmentPipe(AugmentSpec(brightness=1.0), p=1.0)(x, _gen(0)) - x
    torch.testing.assert_close(d, d[:, :1, :1, :1].expand_as(d), atol=1e-6, rtol=0)
    assert d[:, 0, 0, 0].std() > 0.05  # std 0.2 offsets, different per image


def test_grayscale_colour_rules() -> None:
    x = _images(16, 1, 8, 8)
    # Hue and saturation leave grey untouched.
    assert torch.equal(AugmentPipe(AugmentSpec(hue=1.0, saturation=1.0), p=1.0)(x, _gen(0)), x)
    # Luma flip negates the grey value.
    y = AugmentPipe(AugmentSpec(lumaflip=1.0), p=1.0)(x, _gen(0))
    negated = [torch.allclose(y[i], -x[i], atol=1e-6) for i in range(16)]
    kept = [torch.allclose(y[i], x[i], atol=1e-6) for i in range(16)]
    assert all(n != k for n, k in zip(negated, kept, strict=True)) and any(negated) and any(kept)


def test_moderate_p_gives_plausible_images() -> None:
    x = _smooth(32, 3, 32, 32).clamp(-1, 1)
    # Geometry only moves pixels: the range grows only by the resampling filter's ringing.
    y = AugmentPipe("bg", p=0.3)(x, _gen(0))
    assert torch.isfinite(y).all() and y.abs().max() < 1.5
    # Colour factors are lognormal (saturation 2^N(0,1) can be x4 or more), so single images may leave
    # [-1, 1]; at p = 0.3 the typical image keeps its scale.
    y = AugmentPipe("bgc", p=0.3)(x, _gen(0))
    assert torch.isfinite(y).all()
    ratio = y.flatten(1).std(dim=1) / x.flatten(1).std(dim=1)
    assert 0.67 < ratio.median() < 1.5
    assert (y.abs() > 1.5).float().mean() < 0.1


@pytest.mark.parametrize("channels", [1, 3])
def test_gradcheck_through_a_fixed_draw(channels: int) -> None:
    pipe = AugmentPipe("bgc", p=1.0)
    x = _images(1, channels, 8, 8, dtype=torch.float64).requires_grad_(True)
    assert not torch.allclose(pipe(x, _gen(5)), x)  # the draw really transforms the images

    def f(img: torch.Tensor) -> torch.Tensor:
        return pipe(img, _gen(5))

    # Full Jacobian for the grey image; random projections (fast mode) for RGB and second order.
    assert torch.autograd.gradcheck(f, (x,), fast_mode=channels == 3)
    assert torch.autograd.gradgradcheck(f, (x,), fast_mode=True)  # R1 differentiates through augmented reals


def test_gradient_through_exact_blit_path() -> None:
    pipe = AugmentPipe(AugmentSpec(xflip=1.0, rotate90=1.0, xint=1.0), p=1.0)
    x = _images(2, 1, 6, 6, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda img: pipe(img, _gen(2)), (x,))


def test_p_is_saved_in_state_dict() -> None:
    pipe = AugmentPipe("bgc", p=0.25)
    state = pipe.state_dict()
    assert set(state) == {"p"}
    other = AugmentPipe("bgc")
    other.load_state_dict(state)
    assert float(other.p) == 0.25


def test_invalid_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="'xyz'"):
        AugmentPipe("xyz")
    with pytest.raises(ValueError, match="1.5"):
        AugmentPipe("bgc", p=1.5)
    with pytest.raises(ValueError, match="scale_std"):
        AugmentSpec(scale_std=-1.0)
    with pytest.raises(ValueError, match="unknown AugmentSpec field"):
        AugmentSpec.from_preset("bgc", flip=1.0)
    with pytest.raises(ValueError, match="got 2"):
        AugmentPipe("bgc", p=0.5)(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"\(8, 8\)"):
        AugmentPipe("bgc", p=0.5)(torch.zeros(8, 8))


# ------------------------------------------------------------------------------------------ AdaptiveAugment

def _logits(mean_sign: float, n: int = 20) -> torch.Tensor:
    """n logits whose signs average to `mean_sign` (n * (1 + mean_sign) / 2 positive)."""
    pos = round(n * (1 + mean_sign) / 2)
    return torch.cat([torch.full((pos,), 2.0), torch.full((n - pos,), -3.0)])


def _controller(p: float, **kw: float) -> AdaptiveAugment:
    return AdaptiveAugment(AugmentPipe("bgc", p=p), batch_size=8, **kw)


def test_step_size_is_batch_times_interval_over_ada_kimg() -> None:
    ada = _controller(0.5, interval=4, ada_kimg=500)
    assert ada.adjustment == 8 * 4 / (500 * 1000)


@pytest.mark.parametrize(("signs", "direction"), [([1, 1, 1, 0], 1), ([0, 0, 0, 1], -1), ([0.7] * 4, 1),
                                                   ([0.5] * 4, -1), ([-1] * 4, -1)])
def test_controller_moves_p_by_exactly_one_step(signs: list[float], direction: int) -> None:
    # r_t averages over all four steps: [1, 1, 1, 0] -> 0.75 (up), [0, 0, 0, 1] -> 0.25 (down).
    ada = _controller(0.5)
    for k, s in enumerate(signs):
        ada.accumulate(_logits(s))
        adjusted = ada.step()
        assert adjusted == (k == 3)
        if k < 3:
            assert ada.p == 0.5
    assert ada.rt == pytest.approx(sum(signs) / 4)
    assert ada.p == pytest.approx(0.5 + direction * ada.adjustment, rel=0, abs=1e-15)
    assert float(ada.pipe.p) == pytest.approx(ada.p, abs=1e-7)


def test_controller_at_target_keeps_p() -> None:
    ada = _controller(0.5, interval=1)
    ada.accumulate(_logits(0.6))
    ada.step()
    assert ada.p == 0.5


def test_controller_clamps_to_unit_interval() -> None:
    low = _controller(0.0, interval=1)
    low.accumulate(_logits(-1))
    low.step()
    assert low.p == 0.0
    high = _controller(1.0 - 1e-5, interval=1)
    high.accumulate(_logits(1))
    high.step()
    assert high.p == 1.0 and float(high.pipe.p) == 1.0


def test_controller_many_adjustments_are_exact() -> None:
    ada = _controller(0.0, interval=2, ada_kimg=1)  # step 0.016
    for _ in range(20):
        ada.accumulate(_logits(1))
        ada.step()
    assert ada.p == pytest.approx(10 * 0.016, abs=1e-12)


def test_controller_state_round_trip(tmp_path) -> None:
    signs = [1, 0.2, 0.9, 1, -0.4, 0.8, 1, 1, 0.1, 0.95, 0.7, 0.3]
    a = _controller(0.3, ada_kimg=2)
    for s in signs[:6]:  # stop mid-interval, with signs pending
        a.accumulate(_logits(s))
        a.step()
    torch.save(a.state_dict(), tmp_path / "ada.pt")
    b = _controller(0.0, ada_kimg=2)
    b.load_state_dict(torch.load(tmp_path / "ada.pt", weights_only=True))
    assert b.p == a.p and float(b.pipe.p) == float(a.pipe.p)
    for s in signs[6:]:
        for ada in (a, b):
            ada.accumulate(_logits(s))
            ada.step()
        assert (a.p, a.rt, a.num_steps) == (b.p, b.rt, b.num_steps)
    assert a.p != 0.3


def test_controller_rejects_bad_state_and_arguments() -> None:
    ada = _controller(0.5)
    with pytest.raises(ValueError, match="expected"):
        ada.load_state_dict({"p": 0.5})
    with pytest.raises(ValueError, match="batch_size"):
        AdaptiveAugment(AugmentPipe(), batch_size=0)
    with pytest.raises(ValueError, match="interval"):
        AdaptiveAugment(AugmentPipe(), batch_size=4, interval=0)


def _two_rank_worker(rank: int, init_file: str, results: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        ada = AdaptiveAugment(AugmentPipe("bgc", p=0.5), batch_size=8, interval=1)
        # Rank 0 sees only positive logits, rank 1 only negative ones: together r_t = 0 < 0.6.
        ada.accumulate(_logits(1.0 if rank == 0 else -1.0))
        ada.step()
        torch.save({"p": ada.p, "rt": ada.rt}, f"{results}.{rank}")
    finally:
        torch.distributed.destroy_process_group()


def test_controller_all_reduces_across_ranks(tmp_path) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available")
    import torch.multiprocessing as mp

    results = str(tmp_path / "result")
    mp.spawn(_two_rank_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True)
    for rank in range(2):
        r = torch.load(f"{results}.{rank}", weights_only=True)
        assert r["rt"] == 0.0
        assert r["p"] == pytest.approx(0.5 - 8 / (500 * 1000), abs=1e-15)
