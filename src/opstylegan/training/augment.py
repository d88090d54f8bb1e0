"""ADA: the adaptive discriminator augmentation of stylegan2-ada ("Training GANs with Limited Data"), pure PyTorch.

Two objects:

* `AugmentPipe` augments a batch of images (real and generated alike, before the discriminator). Each
  augmentation of the chosen preset is applied to each image independently with probability `p`.
  The geometric ones (x-flip, 90-degree rotation, integer translation, isotropic scaling, arbitrary
  rotation, anisotropic scaling, fractional translation) are composed into ONE 3x3 homogeneous matrix per
  image and executed once; the colour ones (brightness, contrast, luma flip, hue rotation, saturation)
  into ONE 4x4 matrix per image.
* `AdaptiveAugment` tunes `p` during training from the sign of D's logits on reals (the r_t heuristic).

How the geometric matrix is executed, per image:

* identity (nothing drawn): the image is returned untouched, bit for bit. This makes `p = 0` exact.
* an integer pixel permutation (blit: flips, 90-degree rotations, integer shifts, in any combination):
  an exact gather of pixels, with reflection at the borders. No resampling, no blur.
* anything else: stylegan2-ada's alias-suppressing resampler. Reflect-pad by just enough margin,
  upsample 2x with the orthogonal `sym6` wavelet low-pass filter, bilinear `grid_sample` at the
  transformed positions, low-pass and decimate 2x with the same filter, crop back to the input size.

Everything after the random draws is built from differentiable PyTorch ops (gather, reflect pad, FIR
convolutions, `grid_sample`, matmul), so gradients flow to the images -- also the second derivatives that
R1 needs when reals are augmented. The random parameters are drawn on the CPU, from the `generator`
argument or the global RNG, so a seed gives the same augmentation on every device.

Provenance: a reimplementation, written for this project from the paper (Karras et al. 2020, "Training
Generative Adversarial Networks with Limited Data") and the algorithm of NVlabs/stylegan2-ada-pytorch, which
is under the NVIDIA Source Code License (non-commercial). No code of it is copied: the transform sequence,
probabilities and ranges are facts of the method, and the sym6 taps are the published wavelet's coefficients.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from opstylegan.nn.resample import setup_filter, upfirdn2d, upsample2d

__all__ = ["AUGMENT_PRESETS", "AdaptiveAugment", "AugmentPipe", "AugmentSpec"]

# Low-pass decomposition filter of the symlet-6 wavelet (PyWavelets coefficients). Being orthogonal,
# 2x upsampling followed by 2x downsampling with it is (up to rounding) the identity, so the resampler
# adds no blur of its own.
_SYM6 = (
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148,
)

_BLIT = ("xflip", "rotate90", "xint")
_GEOM = ("scale", "rotate", "aniso", "xfrac")
_COLOR = ("brightness", "contrast", "lumaflip", "hue", "saturation")

#: Preset name -> the augmentations it enables ('b' = pixel blitting, 'g' = general geometry, 'c' = colour).
AUGMENT_PRESETS: dict[str, tuple[str, ...]] = {
    "bgc": _BLIT + _GEOM + _COLOR,  # stylegan2-ada's default
    "bg": _BLIT + _GEOM,
    "gc": _GEOM + _COLOR,
    "b": _BLIT,
    "g": _GEOM,
    "c": _COLOR,
}


@dataclass(frozen=True)
class AugmentSpec:
    """Which augmentations run, and how strongly.

    The first twelve fields are probability multipliers (0 = off, 1 = applied with probability `p`);
    the rest are strengths, with stylegan2-ada's values as defaults. "log2 std" means the factor is
    `2 ** (N(0, 1) * std)`.
    """

    xflip: float = 0.0  # mirror left-right (half of the time when selected)
    rotate90: float = 0.0  # rotate by a uniform multiple of 90 degrees
    xint: float = 0.0  # integer translation
    scale: float = 0.0  # isotropic scaling
    rotate: float = 0.0  # arbitrary rotation (split into a pre- and a post-rotation around `aniso`)
    aniso: float = 0.0  # anisotropic scaling
    xfrac: float = 0.0  # fractional translation
    brightness: float = 0.0  # add a constant to all channels
    contrast: float = 0.0  # multiply all channels
    lumaflip: float = 0.0  # reflect colours through the plane orthogonal to the luma axis (half of the time)
    hue: float = 0.0  # rotate colours around the luma axis
    saturation: float = 0.0  # scale colours away from the luma axis
    xint_max: float = 0.125  # range of integer translation, relative to the image size
    scale_std: float = 0.2  # log2 std of isotropic scaling
    rotate_max: float = 1.0  # range of arbitrary rotation, 1 = full circle
    aniso_std: float = 0.2  # log2 std of anisotropic scaling
    xfrac_std: float = 0.125  # std of fractional translation, relative to the image size
    brightness_std: float = 0.2  # std of the brightness offset
    contrast_std: float = 0.5  # log2 std of contrast
    hue_max: float = 1.0  # range of hue rotation, 1 = full circle
    saturation_std: float = 1.0  # log2 std of saturation

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"AugmentSpec.{f.name} must be a finite number >= 0, got {value!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides: float) -> AugmentSpec:
        """The spec of a named preset ('bgc', 'bg', 'gc', 'b', 'g', 'c'), with optional field overrides."""
        if name not in AUGMENT_PRESETS:
            raise ValueError(f"unknown augmentation preset {name!r}; expected one of {sorted(AUGMENT_PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ValueError(f"unknown AugmentSpec field(s) {unknown}; expected names from {sorted(known)}")
        return cls(**{**dict.fromkeys(AUGMENT_PRESETS[name], 1.0), **overrides})

    def to_dict(self) -> dict[str, float]:
        """Plain dict (for the JSON run config); `AugmentSpec(**d)` inverts it."""
        return asdict(self)


# ---------------------------------------------------------------------------------------------------
# Batched homogeneous matrices. All take [B] float64 tensors (or floats) and return [B, 3, 3] / [B, 4, 4].

def _matrix(rows: list[list[torch.Tensor | float]], batch: int) -> torch.Tensor:
    elems = [torch.as_tensor(e, dtype=torch.float64).expand(batch) for row in rows for e in row]
    return torch.stack(elems, dim=-1).reshape(batch, len(rows), len(rows[0]))  # [B, rows*cols] -> [B, r, c]


def _translate2d(tx: torch.Tensor | float, ty: torch.Tensor | float, batch: int) -> torch.Tensor:
    return _matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]], batch)


def _scale2d(sx: torch.Tensor | float, sy: torch.Tensor | float, batch: int) -> torch.Tensor:
    return _matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]], batch)


def _rotate2d(theta: torch.Tensor, batch: int) -> torch.Tensor:
    c, s = torch.cos(theta), torch.sin(theta)
    return _matrix([[c, -s, 0], [s, c, 0], [0, 0, 1]], batch)


def _translate3d(t: torch.Tensor, batch: int) -> torch.Tensor:
    return _matrix([[1, 0, 0, t], [0, 1, 0, t], [0, 0, 1, t], [0, 0, 0, 1]], batch)


def _scale3d(s: torch.Tensor, batch: int) -> torch.Tensor:
    return _matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]], batch)


def _rotate3d(v: torch.Tensor, theta: torch.Tensor, batch: int) -> torch.Tensor:
    """Rotation by `theta` around the unit axis v = (vx, vy, vz) (Rodrigues' formula)."""
    vx, vy, vz = (float(a) for a in v[:3])
    s, c = torch.sin(theta), torch.cos(theta)
    cc = 1 - c
    return _matrix([
        [vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
        [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
        [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
        [0, 0, 0, 1],
    ], batch)


class _Draws:
    """Random numbers for one forward pass: CPU, float64, from `generator` or the global RNG."""

    def __init__(self, generator: torch.Generator | None) -> None:
        self.generator = generator

    def rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)

    def randn(self, *shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float64)

    def gate(self, value: torch.Tensor, neutral: float, prob: float) -> torch.Tensor:
        """Keep each row of `value` with probability `prob`, else replace it by `neutral`."""
        keep = self.rand(value.shape[0], *([1] * (value.ndim - 1))) < prob
        return torch.where(keep, value, torch.full_like(value, neutral))


# ---------------------------------------------------------------------------------------------------
# Executing the transforms.

def _reflect_index(i: torch.Tensor, n: int) -> torch.Tensor:
    """Map integer positions onto [0, n) by mirroring at the edges (edge pixel not repeated: 'reflect')."""
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = torch.remainder(i, period)
    return torch.where(i >= n, period - i, i)


def _blit(images: torch.Tensor, pix: torch.Tensor) -> torch.Tensor:
    """Exact gather: output pixel (x, y) takes input pixel pix @ (x, y, 1). pix: [N, 3, 3], integral."""
    n, c, h, w = images.shape
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                            indexing="ij")
    coords = torch.stack([xs.flatten(), ys.flatten(), torch.ones(h * w, dtype=torch.float64)])  # [3, H*W]
    src = (pix[:, :2, :] @ coords).round().long()  # [N, 2, H*W]: source (x, y) of every output pixel
    flat = _reflect_index(src[:, 1], h) * w + _reflect_index(src[:, 0], w)  # [N, H*W]
    flat = flat.to(images.device)[:, None, :].expand(n, c, h * w)
    return images.reshape(n, c, h * w).gather(2, flat).reshape(n, c, h, w)  # [N, C, H*W] -> [N, C, H, W]


def _resample(images: torch.Tensor, g_inv: torch.Tensor, hz: torch.Tensor) -> torch.Tensor:
    """Alias-suppressed affine warp (stylegan2-ada's scheme). g_inv: [N, 3, 3] maps output pixel
    coordinates, measured from the image centre, to input ones; hz: [k, k] orthogonal wavelet low-pass."""
    n, c, h, w = images.shape
    cx, cy = (w - 1) / 2, (h - 1) / 2
    hz_pad = hz.shape[0] // 4

    # Reflect-pad just enough for the transformed corners (plus the filter support) to stay inside.
    corners = torch.tensor([[-cx, -cy, 1], [cx, -cy, 1], [cx, cy, 1], [-cx, cy, 1]], dtype=torch.float64)
    cp = (g_inv @ corners.t())[:, :2, :].permute(1, 0, 2).flatten(1)  # [N, xy, 4] -> [xy, N*4]
    margin = torch.cat([-cp, cp]).amax(dim=1)  # [x0, y0, x1, y1]: how far sampling reaches past the centre
    margin = margin + torch.tensor([hz_pad * 2 - cx, hz_pad * 2 - cy] * 2, dtype=torch.float64)
    margin = margin.clamp(min=0).minimum(torch.tensor([w - 1, h - 1] * 2, dtype=torch.float64))
    mx0, my0, mx1, my1 = (int(m) for m in margin.ceil())
    images = F.pad(images, [mx0, mx1, my0, my1], mode="reflect")
    g_inv = _translate2d((mx0 - mx1) / 2, (my0 - my1) / 2, n) @ g_inv  # the centre moved with the padding

    # Upsample 2x; express g_inv in the coordinates of the upsampled grid (pixel centres at +-0.5).
    images = upsample2d(images, hz, up=2)
    g_inv = _scale2d(2, 2, n) @ g_inv @ _scale2d(0.5, 0.5, n)
    g_inv = _translate2d(-0.5, -0.5, n) @ g_inv @ _translate2d(0.5, 0.5, n)

    # Bilinear sampling onto an output grid that keeps hz_pad*2 extra pixels per side for the low-pass.
    out_h, out_w = (h + hz_pad * 2) * 2, (w + hz_pad * 2) * 2
    in_h, in_w = images.shape[2], images.shape[3]
    theta = _scale2d(2 / in_w, 2 / in_h, n) @ g_inv @ _scale2d(out_w / 2, out_h / 2, n)  # normalised coords
    theta = theta[:, :2, :].to(device=images.device, dtype=images.dtype)
    grid = F.affine_grid(theta, [n, c, out_h, out_w], align_corners=False)
    images = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    # Low-pass, decimate 2x and crop the extra margin: [N, C, 2H + 4*hz_pad, ...] -> [N, C, H, W].
    k = hz.shape[0]
    p0, p1 = -hz_pad * 2 + (k - 1) // 2, -hz_pad * 2 + (k - 2) // 2
    return upfirdn2d(images, hz, down=2, padding=(p0, p1, p0, p1), flip_filter=True)


def _apply_color(images: torch.Tensor, cmat: torch.Tensor) -> torch.Tensor:
    """Apply per-image 4x4 colour matrices [B, 4, 4] to RGB or grayscale images [B, C, H, W]."""
    b, c, h, w = images.shape
    cmat = cmat.to(device=images.device, dtype=images.dtype)
    x = images.reshape(b, c, h * w)  # [B, C, H*W]
    if c == 3:
        x = cmat[:, :3, :3] @ x + cmat[:, :3, 3:]
    else:
        # Grayscale: treat the value as the RGB colour (g, g, g), transform, and average the channels.
        row = cmat[:, :3, :].mean(dim=1, keepdim=True)  # [B, 1, 4]
        x = x * row[:, :, :3].sum(dim=2, keepdim=True) + row[:, :, 3:]
    return x.reshape(b, c, h, w)


class AugmentPipe(nn.Module):
    """stylegan2-ada's augmentation pipeline (blit, geometric and colour groups).

    Args:
        spec: a preset name ('bgc' = stylegan2-ada's default, 'bg', 'gc', 'b', 'g', 'c') or an
            `AugmentSpec` for full control.
        p: initial augmentation probability in [0, 1]. Stored in the buffer `p`, hence in state dicts;
            `AdaptiveAugment` updates it during training.

    Input images are [B, C, H, W] floating point, C = 3 (RGB) or 1 (grayscale), in any range (the
    colour transforms treat 0 as mid-grey, as for images in [-1, 1]). For grayscale images the colour
    matrix is applied to the grey value taken as an RGB colour and the result averaged over R, G, B:
    brightness and contrast act as on RGB, luma flip negates the image, and hue and saturation -- which
    leave grey colours unchanged -- are skipped.
    """

    p: torch.Tensor
    hz_geom: torch.Tensor

    def __init__(self, spec: str | AugmentSpec = "bgc", *, p: float = 0.0) -> None:
        super().__init__()
        if isinstance(spec, str):
            spec = AugmentSpec.from_preset(spec)
        elif not isinstance(spec, AugmentSpec):
            raise TypeError(f"spec must be a preset name or an AugmentSpec, got {type(spec).__name__}")
        self.spec = spec
        self.register_buffer("p", torch.tensor(_check_p(p), dtype=torch.float32))
        # Fixed filter, rebuilt on construction, so it is left out of state dicts.
        self.register_buffer("hz_geom", setup_filter(_SYM6), persistent=False)

    def extra_repr(self) -> str:
        active = [name for name in _BLIT + _GEOM + _COLOR if getattr(self.spec, name) > 0]
        return f"p={float(self.p):.4f}, augmentations={active}"

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Augment `images` [B, C, H, W]; same shape, dtype and device (the input itself when p = 0).

        `generator` must be a CPU `torch.Generator` (the parameters are drawn on the CPU, so that a
        seed gives the same augmentations on every device); None uses the global CPU RNG. Reading `p`
        is the only host-device synchronisation. The draws depend on the batch size, as in stylegan2-ada.
        """
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a [B, C, H, W] tensor, got {shape}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point, got dtype {images.dtype}")
        batch, channels, height, width = images.shape
        if channels not in (1, 3):
            raise ValueError(f"images must have 1 (grayscale) or 3 (RGB) channels, got {channels}")
        if height < 2 or width < 2:
            raise ValueError(f"images must be at least 2x2 pixels, got {height}x{width}")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError(f"generator must be a CPU torch.Generator, got one on {generator.device}")
        p = float(self.p)
        if p == 0 or batch == 0:
            return images
        draws = _Draws(generator)

        g_inv = self._draw_geometric(draws, p, batch, height, width)
        if g_inv is not None:
            images = self._apply_geometric(images, g_inv)
        cmat = self._draw_color(draws, p, batch, channels)
        if cmat is not None and bool((cmat != torch.eye(4, dtype=torch.float64)).any()):
            images = _apply_color(images, cmat)
        return images

    # -- random parameters ----------------------------------------------------------------------------

    def _draw_geometric(self, draws: _Draws, p: float, batch: int, height: int,
                        width: int) -> torch.Tensor | None:
        """The inverse transform G_inv [B, 3, 3] (output pixel -> input pixel, centred coordinates),
        built by right-multiplying the inverse of each step; None if no geometric augmentation is on."""
        s = self.spec
        if all(getattr(s, name) == 0 for name in _BLIT + _GEOM):
            return None
        g = torch.eye(3, dtype=torch.float64).repeat(batch, 1, 1)
        if s.xflip > 0:
            i = draws.gate(torch.floor(draws.rand(batch) * 2), 0, s.xflip * p)
            g = g @ _scale2d(1 - 2 * i, 1, batch)  # its own inverse
        if s.rotate90 > 0:
            i = draws.gate(torch.floor(draws.rand(batch) * 4), 0, s.rotate90 * p)
            g = g @ _rotate2d(math.pi / 2 * i, batch)  # inverse of a rotation by -90 * i degrees
        if s.xint > 0:
            t = draws.gate((draws.rand(batch, 2) * 2 - 1) * s.xint_max, 0, s.xint * p)
            g = g @ _translate2d(-torch.round(t[:, 0] * width), -torch.round(t[:, 1] * height), batch)
        if s.scale > 0:
            k = draws.gate(torch.exp2(draws.randn(batch) * s.scale_std), 1, s.scale * p)
            g = g @ _scale2d(1 / k, 1 / k, batch)
        # Rotation is split in two independent halves, one before and one after the anisotropic scaling,
        # each with p_rot such that P(pre or post) = rotate * p.
        p_rot = 1 - math.sqrt(min(max(1 - s.rotate * p, 0.0), 1.0))
        if s.rotate > 0:
            theta = draws.gate((draws.rand(batch) * 2 - 1) * math.pi * s.rotate_max, 0, p_rot)
            g = g @ _rotate2d(theta, batch)
        if s.aniso > 0:
            k = draws.gate(torch.exp2(draws.randn(batch) * s.aniso_std), 1, s.aniso * p)
            g = g @ _scale2d(1 / k, k, batch)
        if s.rotate > 0:
            theta = draws.gate((draws.rand(batch) * 2 - 1) * math.pi * s.rotate_max, 0, p_rot)
            g = g @ _rotate2d(theta, batch)
        if s.xfrac > 0:
            t = draws.gate(draws.randn(batch, 2) * s.xfrac_std, 0, s.xfrac * p)
            g = g @ _translate2d(-t[:, 0] * width, -t[:, 1] * height, batch)
        return g

    def _draw_color(self, draws: _Draws, p: float, batch: int, channels: int) -> torch.Tensor | None:
        """The colour matrix C [B, 4, 4] (C @ (r, g, b, 1) = new colour); None if no colour augmentation."""
        s = self.spec
        if all(getattr(s, name) == 0 for name in _COLOR):
            return None
        eye = torch.eye(4, dtype=torch.float64)
        luma = torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=torch.float64) / math.sqrt(3)  # luma axis
        vv = torch.outer(luma, luma)
        cmat = eye.repeat(batch, 1, 1)
        if s.brightness > 0:
            b = draws.gate(draws.randn(batch) * s.brightness_std, 0, s.brightness * p)
            cmat = _translate3d(b, batch) @ cmat
        if s.contrast > 0:
            k = draws.gate(torch.exp2(draws.randn(batch) * s.contrast_std), 1, s.contrast * p)
            cmat = _scale3d(k, batch) @ cmat
        if s.lumaflip > 0:
            i = draws.gate(torch.floor(draws.rand(batch, 1, 1) * 2), 0, s.lumaflip * p)
            cmat = (eye - 2 * vv * i) @ cmat  # Householder reflection
        if s.hue > 0 and channels > 1:
            theta = draws.gate((draws.rand(batch) * 2 - 1) * math.pi * s.hue_max, 0, s.hue * p)
            cmat = _rotate3d(luma, theta, batch) @ cmat
        if s.saturation > 0 and channels > 1:
            k = draws.gate(torch.exp2(draws.randn(batch, 1, 1) * s.saturation_std), 1, s.saturation * p)
            cmat = (vv + (eye - vv) * k) @ cmat
        return cmat

    # -- execution -------------------------------------------------------------------------------------

    def _apply_geometric(self, images: torch.Tensor, g_inv: torch.Tensor) -> torch.Tensor:
        """Identity images stay untouched, pure pixel permutations are gathered exactly, the rest resampled."""
        _, _, height, width = images.shape
        cx, cy = (width - 1) / 2, (height - 1) / 2
        batch = g_inv.shape[0]
        # The same map in pixel indices: index -> centred -> G_inv -> index.
        pix = _translate2d(cx, cy, batch) @ g_inv @ _translate2d(-cx, -cy, batch)  # [B, 3, 3]
        identity = (g_inv == torch.eye(3, dtype=torch.float64)).all(dim=2).all(dim=1)
        integral = ((pix - pix.round()).abs() < 1e-6).all(dim=2).all(dim=1)
        out = images
        blit = (integral & ~identity).nonzero().flatten()
        if blit.numel() > 0:
            sel = blit.to(images.device)
            out = out.index_copy(0, sel, _blit(images.index_select(0, sel), pix[blit].round()))
        general = (~integral).nonzero().flatten()
        if general.numel() > 0:
            sel = general.to(images.device)
            out = out.index_copy(0, sel, _resample(images.index_select(0, sel), g_inv[general], self.hz_geom))
        return out


def _check_p(p: float) -> float:
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augmentation probability p must be in [0, 1], got {p}")
    return p


class AdaptiveAugment:
    """The ADA controller: keeps `pipe.p` such that D is right about the sign of a real image's logit
    a fraction `target` of the time.

    Call `accumulate(real_logits)` with D's logits on (augmented) reals, as often as they are computed,
    and `step()` once per discriminator step. Every `interval` steps, r_t = mean(sign(D(real))) over
    everything accumulated since the last adjustment (summed over all ranks when torch.distributed is
    initialised) moves p by `sign(r_t - target) * batch_size * interval / (ada_kimg * 1000)`, clamped to
    [0, 1]; at this speed p can go from 0 to 1 in `ada_kimg` thousand real images.

    The controller keeps p in double precision and copies it into `pipe.p` (float32) after each
    adjustment, so thousands of tiny steps do not accumulate float32 rounding. It starts from the
    pipe's p; set p through the controller (`load_state_dict`) rather than on the pipe while it runs.

    Args:
        pipe: the augmentation pipe whose `p` is controlled.
        batch_size: the global batch size (all ranks together) of one discriminator step.
        target: the target r_t (0.6 in stylegan2-ada).
        interval: adjust every this many discriminator steps.
        ada_kimg: thousands of images for p to go from 0 to 1.
    """

    def __init__(self, pipe: AugmentPipe, *, batch_size: int, target: float = 0.6, interval: int = 4,
                 ada_kimg: float = 500.0) -> None:
        if not isinstance(pipe, AugmentPipe):
            raise TypeError(f"pipe must be an AugmentPipe, got {type(pipe).__name__}")
        if int(batch_size) != batch_size or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target must be in [0, 1], got {target}")
        if int(interval) != interval or interval < 1:
            raise ValueError(f"interval must be a positive integer, got {interval!r}")
        if not ada_kimg > 0:
            raise ValueError(f"ada_kimg must be > 0, got {ada_kimg}")
        self.pipe = pipe
        self.batch_size = int(batch_size)
        self.target = float(target)
        self.interval = int(interval)
        self.ada_kimg = float(ada_kimg)
        self._p = float(pipe.p)
        self.num_steps = 0  # discriminator steps seen
        self.rt: float | None = None  # the last measured r_t (for logging)
        self._sign_sum: torch.Tensor | None = None  # lazily on the logits' device, to avoid syncs
        self._count = 0

    @property
    def p(self) -> float:
        """The current augmentation probability."""
        return self._p

    @property
    def adjustment(self) -> float:
        """How much p moves at each adjustment: batch_size * interval / (ada_kimg * 1000)."""
        return self.batch_size * self.interval / (self.ada_kimg * 1000)

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Add the signs of D's logits on reals (any shape) to the running statistic."""
        signs = real_logits.detach().sign().sum(dtype=torch.float64)
        self._sign_sum = signs if self._sign_sum is None else self._sign_sum + signs.to(self._sign_sum.device)
        self._count += real_logits.numel()

    def step(self) -> bool:
        """Count one discriminator step; adjust p if it is the `interval`-th. Returns whether it adjusted."""
        self.num_steps += 1
        if self.num_steps % self.interval != 0:
            return False
        device = self._sign_sum.device if self._sign_sum is not None else self.pipe.p.device
        stats = torch.zeros(2, dtype=torch.float64, device=device)
        if self._sign_sum is not None:
            stats[0] = self._sign_sum
        stats[1] = self._count
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(stats)
        sign_sum, count = stats.tolist()
        self._sign_sum, self._count = None, 0
        if count == 0:
            return False
        self.rt = sign_sum / count
        direction = (self.rt > self.target) - (self.rt < self.target)
        self._p = min(max(self._p + direction * self.adjustment, 0.0), 1.0)
        with torch.no_grad():
            self.pipe.p.fill_(self._p)
        return True

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly (plain Python numbers; loads with weights_only=True).

        The pending sign statistic is this rank's own; after a resume each rank restores what it saved.
        """
        return {
            "p": self.p,
            "num_steps": self.num_steps,
            "rt": self.rt,
            "sign_sum": 0.0 if self._sign_sum is None else float(self._sign_sum),
            "sign_count": self._count,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a `state_dict()`, including the pipe's p."""
        expected = {"p", "num_steps", "rt", "sign_sum", "sign_count"}
        if set(state) != expected:
            raise ValueError(f"AdaptiveAugment state has keys {sorted(state)}; expected {sorted(expected)}")
        self._p = _check_p(state["p"])
        with torch.no_grad():
            self.pipe.p.fill_(self._p)
        self.num_steps = int(state["num_steps"])
        self.rt = None if state["rt"] is None else float(state["rt"])
        self._count = int(state["sign_count"])
        self._sign_sum = (torch.tensor(float(state["sign_sum"]), dtype=torch.float64, device=self.pipe.p.device)
                          if self._count > 0 else None)
