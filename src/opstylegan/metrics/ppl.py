"""Perceptual path length (PPL), the StyleGAN2 protocol (stylegan2-ada's ``ppl_*`` metrics).

For each sample: draw a latent pair ``z0, z1`` and ``t ~ U(0, 1)`` (``sampling="full"``) or ``t = 0``
(``sampling="end"``); interpolate at ``t`` and ``t + epsilon`` — slerp in Z (``space="z"``) or lerp after the
mapping network (``space="w"``); synthesize both images; optionally crop the face (``crop=True``: rows
``3H/8 .. 7H/8``, columns ``2W/8 .. 6W/8``) and box-downsample to 256 px when larger; the sample's value is
``LPIPS_vgg(img_t, img_t+eps) / epsilon^2``. PPL is the mean of the values between the 1st ("lower") and 99th
("higher") percentiles.

For overparameterized models the latent of an image is the whole matrix (Z ``[R, z_dim]`` or
W ``[R, w_dim]``), interpolated as a whole (slerp treats the flattened matrix as one vector). No noise inputs
exist in this generator, so nothing else varies between the two images.

Sample ``i`` draws its ``z0, z1, t`` from its own RNG seeded by ``(seed, i)``: the result depends on the seed
and ``num_samples``, not on ``batch_size`` (up to float32 rounding, amplified by ``1 / epsilon^2``).
Down-sampling at 512 px and more: the factor is the (cropped) image's size // 256, as the original TensorFlow
StyleGAN2 computes it, so what LPIPS sees is always 256 px or a little less: the size VGG16 was trained for.
stylegan2-ada uses ``img_resolution // 256`` after the crop, which gives 128 px faces for a cropped 1024 px
generator; PPL with ``crop=True`` at >= 512 px therefore differs from stylegan2-ada's (uncropped, and below
512 px, the two agree).
Differences to stylegan2-ada: LPIPS is the official v0.1 VGG16 (:class:`~opstylegan.metrics.lpips.LPIPS`),
whose small-input rule upsamples images below 32 px (see that module).

Provenance: written for this project from the StyleGAN2 paper's definition and the protocol described above;
no code of stylegan2-ada (NVIDIA Source Code License) is copied.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from opstylegan.metrics.lpips import LPIPS

__all__ = ["PPLResult", "perceptual_path_length", "slerp"]

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PPLResult:
    """A PPL value with its protocol.

    Attributes:
        ppl: Mean of the kept per-sample path lengths.
        num_samples: Samples drawn; num_kept: samples inside the [1st, 99th] percentile band.
        space, sampling, epsilon, crop, seed: The protocol.
        lpips_net: ``"vgg"``.
        distances: All per-sample values (``return_distances=True``), else None.
    """

    ppl: float
    num_samples: int
    num_kept: int
    space: str
    sampling: str
    epsilon: float
    crop: bool
    seed: int
    lpips_net: str = "vgg"
    distances: np.ndarray | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (without the per-sample distances)."""
        d = asdict(self)
        d.pop("distances")
        return d


def slerp(a: torch.Tensor, b: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation of latents ``[B, ...]`` (each flattened to one vector) at ``t`` ``[B]``.

    Like StyleGAN's ``slerp``: the result has the direction of the spherical interpolation of the normalised
    inputs (unit norm); only directions matter after the mapping's pixel norm.
    """
    a2, b2 = a.flatten(1), b.flatten(1)  # [B, ...] -> [B, D]
    a2 = a2 / a2.norm(dim=1, keepdim=True)
    b2 = b2 / b2.norm(dim=1, keepdim=True)
    d = (a2 * b2).sum(dim=1, keepdim=True).clamp(-1, 1)  # cos of the angle, [B, 1]
    p = t.view(-1, 1) * torch.acos(d)
    c = b2 - d * a2
    c = c / c.norm(dim=1, keepdim=True)
    out = a2 * torch.cos(p) + c * torch.sin(p)
    return (out / out.norm(dim=1, keepdim=True)).view_as(a)


def _pair_and_t(G: torch.nn.Module, index: int, seed: int, sampling: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``index``'s latent pair ``[2, ...]`` and ``t`` ``[1]`` from its own RNG."""
    state = int(np.random.SeedSequence([seed, index]).generate_state(1)[0])
    rng = torch.Generator().manual_seed(state)
    z = G.sample_z(2, generator=rng, device="cpu")
    t = torch.rand(1, generator=rng) * (0.0 if sampling == "end" else 1.0)
    return z, t


def _prepare(img: torch.Tensor, crop: bool) -> torch.Tensor:
    if crop:
        h, w = img.shape[-2:]
        if h != w:
            raise ValueError(f"crop=True needs square images, got {h}x{w}")
        c = h // 8
        img = img[:, :, c * 3:c * 7, c * 2:c * 6]
    factor = img.shape[-1] // 256 if img.shape[-1] > 256 else 1
    if factor > 1:  # box-downsample to <= 256 px as stylegan2-ada
        n, ch, h, w = img.shape
        img = img.reshape(n, ch, h // factor, factor, w // factor, factor).mean(dim=(3, 5))
    return img


@torch.no_grad()
def perceptual_path_length(G: torch.nn.Module, *, num_samples: int = 50000, epsilon: float = 1e-4,
                           space: str = "w", sampling: str = "end", crop: bool = False, batch_size: int = 16,
                           seed: int = 0, lpips: LPIPS | None = None, device: torch.device | str | None = None,
                           progress: Progress | None = None, return_distances: bool = False) -> PPLResult:
    """PPL of generator ``G`` (see the module docstring).

    Args:
        G: An :class:`opstylegan.models.generator.Generator` (baseline or overparameterized).
        num_samples: Latent pairs (50000 in stylegan2-ada).
        epsilon: Step along the path (1e-4).
        space: ``"w"`` (lerp of the mapping output: w, or the whole matrix W for overparam models) or ``"z"``
            (slerp in Z, then mapping).
        sampling: ``"end"`` (t = 0) or ``"full"`` (t ~ U(0, 1)).
        crop: Face crop (the StyleGAN2 FFHQ protocol uses it; ``ppl2_wend`` does not).
        batch_size: Pairs per forward pass; does not change the result.
        seed: RNG seed.
        lpips: An LPIPS("vgg") instance to reuse (built if None).
        device: Where to run (default: G's device).
        progress: ``progress(done, num_samples)`` after every batch.
        return_distances: Keep the per-sample values in the result.

    Raises:
        ValueError: Invalid protocol arguments.
    """
    if space not in ("w", "z"):
        raise ValueError(f"space must be 'w' or 'z', got {space!r}")
    if sampling not in ("end", "full"):
        raise ValueError(f"sampling must be 'end' or 'full', got {sampling!r}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if num_samples < 2 or batch_size < 1:
        raise ValueError(f"need num_samples >= 2 and batch_size >= 1, got {num_samples} and {batch_size}")
    if lpips is None:
        lpips = LPIPS("vgg")
    elif lpips.net != "vgg":
        raise ValueError(f"PPL uses LPIPS with the VGG16 backbone, got net={lpips.net!r}")
    device = torch.device(device) if device is not None else G.w_avg.device
    lpips = lpips.to(device)

    dists = []
    for start in range(0, num_samples, batch_size):
        idx = range(start, min(start + batch_size, num_samples))
        pairs, ts = zip(*(_pair_and_t(G, i, seed, sampling) for i in idx), strict=True)
        dtype = G.w_avg.dtype  # float32 normally; float64 if the caller converted G (exact comparisons)
        z = torch.stack(pairs, dim=1).to(device, dtype)  # [2, B, ...]: z0s then z1s
        t = torch.cat(ts).to(device, dtype)  # [B]
        b = t.shape[0]
        if space == "z":
            zt = torch.cat([slerp(z[0], z[1], t), slerp(z[0], z[1], t + epsilon)])  # [2B, ...]
            latent = G.mapping(zt)
        else:
            w = G.mapping(z.flatten(0, 1)).view(2, b, *z.shape[2:-1], -1)  # [2B, ...] -> [2, B, ..., w_dim]
            tt = t.to(w.dtype).view(-1, *([1] * (w.ndim - 2)))  # broadcast over rows / features
            latent = torch.cat([w[0] + (w[1] - w[0]) * tt, w[0] + (w[1] - w[0]) * (tt + epsilon)])  # lerp
        # fp32 always: an fp16 block's rounding, divided by epsilon^2 = 1e-8, swamps the distance (as
        # stylegan2-ada, which forces fp32 for PPL).
        img = _prepare(G.synthesis(latent, force_fp32=True), crop)  # [2B, C, h, w]
        d = lpips(img[:b], img[b:]) / epsilon ** 2
        dists.append(d.double().cpu())
        if progress is not None:
            progress(idx.stop, num_samples)

    dist = torch.cat(dists).numpy()
    lo = np.percentile(dist, 1, method="lower")
    hi = np.percentile(dist, 99, method="higher")
    kept = dist[(dist >= lo) & (dist <= hi)]
    return PPLResult(float(kept.mean()), num_samples, int(kept.size), space, sampling, float(epsilon), crop,
                     seed, "vgg", dist if return_distances else None)
