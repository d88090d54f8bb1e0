"""PULSE (sec. 5.1): find a high-resolution image whose nearest-neighbour downsampled version matches a target.

The low-resolution target is either made from a full-size image with :func:`downsample_nearest`, or given as
is. The generated image goes through the same :func:`downsample_nearest`, and the two low-res images are
compared with LPIPS-VGG. The truncation pull toward ``w_avg`` stays on throughout (``reg_until=1``).

How small images are fed to LPIPS: VGG needs about 32 px, and the LPIPS module would upsample smaller inputs
*bilinearly*, which blurs the very pixel blocks PULSE must match. So both low-res images are first enlarged by
nearest neighbour by the smallest integer factor that makes their side >= 32 (:func:`lpips_view`; e.g. 16x16
-> 32x32, each pixel a 2x2 block); LPIPS then sees them at their own size. Every LPIPS figure PULSE reports
(per step and final) is measured this way; MSE / PSNR are measured at the low resolution itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from opstylegan.inversion.projector import (
    InversionOptions,
    InversionResult,
    ProgressFn,
    check_targets,
    per_image_seeds,
    project,
)
from opstylegan.latent import check_space
from opstylegan.models.generator import Generator

__all__ = ["PULSE_FACTORS", "PulseResult", "downsample_nearest", "lpips_view", "pulse", "upsample_nearest"]

PULSE_FACTORS = (2, 4, 8, 16, 32)
LPIPS_MIN_SIZE = 32


def downsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[N, C, H, W] -> [N, C, H / f, W / f]``: keep the pixel at offset f // 2 of every f x f block.

    That is the block's centre pixel (the one Pillow's NEAREST resize picks), not its top-left corner.
    """
    _check_factor(factor)
    h, w = x.shape[-2:]
    if h % factor or w % factor:
        raise ValueError(f"image size {h}x{w} is not divisible by the downsampling factor {factor}")
    o = factor // 2
    return x[..., o::factor, o::factor]


def upsample_nearest(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``[N, C, h, w] -> [N, C, h f, w f]``: every pixel becomes an f x f block (for viewing low-res images)."""
    if factor == 1:
        return x
    return x.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def lpips_view(x: torch.Tensor) -> torch.Tensor:
    """Enlarge a low-res batch by nearest neighbour so its shorter side is >= 32 px (see module docstring)."""
    k = math.ceil(LPIPS_MIN_SIZE / min(x.shape[-2:]))
    return upsample_nearest(x, k) if k > 1 else x


@dataclass
class PulseResult:
    """Output of :func:`pulse` (CPU tensors).

    Attributes:
        images: High-resolution results ``[N, C, H, W]`` in [-1, 1].
        downsampled: Their nearest-neighbour downsampled versions ``[N, C, H / f, W / f]``.
        lowres_targets: The low-res targets ``[N, C, H / f, W / f]``.
        factor: f.
        inversion: The underlying optimisation (latents, per-step LPIPS ``[steps, N]``; its lpips / mse / psnr
            compare ``downsampled`` with ``lowres_targets``).
    """

    images: torch.Tensor
    downsampled: torch.Tensor
    lowres_targets: torch.Tensor
    factor: int
    inversion: InversionResult

    @property
    def lpips(self) -> torch.Tensor:
        """LPIPS between the downsampled results and the low-res targets, ``[N]``."""
        return self.inversion.lpips

    @property
    def latents(self) -> torch.Tensor:
        return self.inversion.latents


def pulse(
    G: Generator,
    targets: torch.Tensor,
    factor: int,
    space: str | None = None,
    *,
    lowres: bool = False,
    steps: int = 1000,
    lr: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    mse_weight: float = 0.0,
    init: str = "w_avg",
    reg_strength: float = 0.9,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    autocast: torch.dtype | None = None,
    lpips: nn.Module | None = None,
    fingerprint: str | None = None,
    progress: ProgressFn | None = None,
) -> PulseResult:
    """PULSE upsampling by ``factor``: the truncation pull (``reg_strength``) is applied before every step.

    Args:
        G: The generator.
        targets: Full-size images ``[N, C, res, res]`` in [-1, 1] (downsampled here), or with ``lowres=True``
            the low-res images themselves, ``[N, C, res / factor, res / factor]``.
        factor: Downsampling factor, one of 2, 4, 8, 16, 32 (the paper uses 16).
        space: Latent space (default: G's native one).
        Other arguments: as :func:`opstylegan.inversion.invert` (the loss is LPIPS on the low-res images).
    """
    _check_factor(factor)
    space = check_space(space or G.native_space, overparam=G.overparam)
    res = G.img_resolution
    if res % factor or res // factor < 1:
        raise ValueError(f"factor {factor} does not divide the model resolution {res}")
    if lowres:
        small = check_targets(targets, channels=G.img_channels, size=(res // factor, res // factor),
                              name=f"low-res targets (model resolution {res} / factor {factor})")
    else:
        small = downsample_nearest(check_targets(targets, channels=G.img_channels, size=(res, res)), factor)
    opts = InversionOptions(steps=steps, lr=lr, betas=betas, loss="lpips", mse_weight=mse_weight, init=init,
                            reg_strength=reg_strength, reg_until=1.0, seed=seed if isinstance(seed, int) else 0,
                            batch_size=batch_size, autocast=autocast)
    seeds = per_image_seeds(seed, len(small))

    def compare(img: torch.Tensor) -> torch.Tensor:
        return lpips_view(downsample_nearest(img, factor))

    result = project(G, lpips_view(small), space, opts, seeds=seeds, lpips=lpips, fingerprint=fingerprint,
                     progress=progress, compare=compare)
    # mse / psnr were measured on the nearest-enlarged views, which have the same per-pixel errors.
    return PulseResult(images=result.images, downsampled=downsample_nearest(result.images, factor),
                       lowres_targets=small.cpu(), factor=factor, inversion=result)


def _check_factor(factor: int) -> None:
    if isinstance(factor, bool) or factor not in PULSE_FACTORS:
        raise ValueError(f"factor must be one of {list(PULSE_FACTORS)}, got {factor!r}")
