"""Minimal image writing for generated tensors (reading and datasets live in opstylegan.data)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from opstylegan.io.atomic import atomic_path


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """Images [B, C, H, W] in [-1, 1] -> uint8 [B, H, W, C] (values clipped, rounded to nearest)."""
    if img.ndim != 4:
        raise ValueError(f"to_uint8 expects [B, C, H, W], got {list(img.shape)}")
    x = (img.detach().to(torch.float32) * 127.5 + 128).clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def save_image(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """uint8 [H, W, C] (C = 1 or 3) -> PNG, written atomically."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] not in (1, 3):
        raise ValueError(f"save_image expects uint8 [H, W, 1|3], got {img.dtype} {list(img.shape)}")
    pil = Image.fromarray(img[:, :, 0] if img.shape[2] == 1 else img)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")


def make_grid(images: Sequence[np.ndarray], cols: int, pad: int = 0) -> np.ndarray:
    """Tiles uint8 [H, W, C] images row-major into one image (missing cells stay black)."""
    if not images:
        raise ValueError("make_grid: no images")
    h, w, c = images[0].shape
    rows = -(-len(images) // cols)
    grid = np.zeros((rows * (h + pad) - pad, cols * (w + pad) - pad, c), dtype=np.uint8)
    for k, im in enumerate(images):
        if im.shape != (h, w, c):
            raise ValueError(f"make_grid: image {k} has shape {im.shape}, expected {(h, w, c)}")
        r, q = divmod(k, cols)
        grid[r * (h + pad): r * (h + pad) + h, q * (w + pad): q * (w + pad) + w] = im
    return grid


def save_grid(path: str | os.PathLike[str], images: Sequence[np.ndarray], cols: int, pad: int = 0) -> None:
    save_image(path, make_grid(images, cols, pad))
