"""The latent spaces, in one vocabulary.

| space | per-image shape | model |
| ----- | --------------- | ----- |
| `w`   | [C]             | any (an overparam model reads it as W with all rows equal) |
| `w+`  | [L, C]          | any: one vector per style layer (L = num_ws) |
| `W`   | [R, C]          | overparam: R rows shared by all layers (as in training) |
| `W+`  | [L, R, C]       | overparam: one matrix per layer |

Internally the synthesis network consumes `ws` of shape [B, L, r, C] with r = 1 (vector latents) or r = R.
Z for the overparam model is a matrix of correlated rows: one z shared by all rows plus one z^(i) per row,
Z_i = (z^(i) + z) / sqrt(2), so every row is a unit Gaussian and any two rows have correlation 1/2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

SPACES = ("w", "w+", "W", "W+")
MATRIX_SPACES = ("W", "W+")


class LatentError(ValueError):
    """A latent has the wrong space or shape for the model it is given to."""


def check_space(space: str, *, overparam: bool) -> str:
    if space not in SPACES:
        raise LatentError(f"unknown latent space {space!r}; expected one of {list(SPACES)}")
    if space in MATRIX_SPACES and not overparam:
        raise LatentError(f"latent space {space!r} needs an overparameterized model; this model is a baseline "
                          f"StyleGAN2, which takes 'w' or 'w+'")
    return space


def latent_shape(space: str, *, num_ws: int, rows: int, w_dim: int) -> tuple[int, ...]:
    """Per-image shape of a latent in `space`."""
    return {"w": (w_dim,), "w+": (num_ws, w_dim), "W": (rows, w_dim), "W+": (num_ws, rows, w_dim)}[space]


def to_ws(latent: torch.Tensor, space: str, *, num_ws: int, rows: int, w_dim: int) -> torch.Tensor:
    """Any latent -> the synthesis input ws [B, L, r, C] (a broadcast view where possible, no copy)."""
    expect = latent_shape(space, num_ws=num_ws, rows=rows, w_dim=w_dim)
    if latent.ndim != len(expect) + 1 or tuple(latent.shape[1:]) != expect:
        raise LatentError(f"a {space!r} latent for this model must have shape [B, {', '.join(map(str, expect))}], "
                          f"got {list(latent.shape)}")
    b = latent.shape[0]
    if space == "w":
        return latent[:, None, None, :].expand(b, num_ws, 1, w_dim)
    if space == "w+":
        return latent[:, :, None, :]
    if space == "W":
        return latent[:, None, :, :].expand(b, num_ws, rows, w_dim)
    return latent


def broadcast(latent: torch.Tensor, space: str, to_space: str, *, num_ws: int, rows: int) -> torch.Tensor:
    """Re-express a latent in a richer space without changing the image it makes (e.g. w -> W, W -> W+).

    Allowed: w -> w+, W, W+;  w+ -> W+;  W -> W+. Returns a contiguous tensor (safe to optimise).
    """
    allowed = {("w", "w+"), ("w", "W"), ("w", "W+"), ("w+", "W+"), ("W", "W+")}
    if space == to_space:
        return latent
    if (space, to_space) not in allowed:
        raise LatentError(f"cannot express a {space!r} latent in space {to_space!r} without losing information")
    w_dim = latent.shape[-1]
    ws = to_ws(latent, space, num_ws=num_ws, rows=rows, w_dim=w_dim)  # [B, L, r, C]
    b = ws.shape[0]
    if to_space == "w+":
        out = ws[:, :, 0]  # r == 1 here: [B, L, C]
    elif to_space == "W":
        out = ws[:, 0].expand(b, rows, w_dim)  # from w: [B, 1, C] -> [B, R, C]
    else:
        out = ws.expand(b, num_ws, rows, w_dim)  # [B, L, R, C]
    return out.contiguous()


def normal_rows(shape: Sequence[int], *, rows: int | None, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, spread: float | None = None) -> torch.Tensor:
    """z ~ N(0, I) [*shape], or the correlated matrix [*shape[:-1], R, z_dim] when rows is set.

    Z_i = (z^(i) + z) / sqrt(2): every row is a unit Gaussian and any two rows have correlation 0.5.
    spread = a in [0, 1] gives Z_i = sqrt(1 - a) z + sqrt(a) z^(i) instead (rows still unit Gaussians, pairwise
    correlation 1 - a): a = 0 makes every row the shared z (the baseline's latent, used when upcycling a
    baseline into the overparameterized model), a = 0.5 is the paper's sampling. The random draws are the
    same for every `spread`, and row 0 of the draw is the z a baseline gets from the same generator state.
    """
    if rows is None:
        return torch.randn(*shape, generator=generator, device=device)
    *lead, z_dim = shape
    draw = torch.randn(*lead, rows + 1, z_dim, generator=generator, device=device)  # row 0 = shared z
    if spread is None:
        return (draw[..., 1:, :] + draw[..., :1, :]) / math.sqrt(2.0)
    if not 0 <= spread <= 1:
        raise LatentError(f"spread must be in [0, 1], got {spread!r}")
    return draw[..., 1:, :] * math.sqrt(spread) + draw[..., :1, :] * math.sqrt(1 - spread)


def z_from_seeds(seeds: Sequence[int], z_dim: int, *, rows: int | None = None,
                 device: torch.device | str | None = None, spread: float | None = None) -> torch.Tensor:
    """One latent per seed, each from its own RNG: the same seed gives the same z whatever the batch."""
    zs = [normal_rows([z_dim], rows=rows, generator=torch.Generator().manual_seed(int(s)), spread=spread)
          for s in seeds]
    if not zs:
        raise LatentError("no seeds given")
    return torch.stack(zs).to(device)


def truncate(latent: torch.Tensor, w_avg: torch.Tensor, psi: float) -> torch.Tensor:
    """latent <- w_avg + psi (latent - w_avg), applied to every vector / row (w_avg [C] broadcasts)."""
    if psi == 1:
        return latent
    w_avg = w_avg.to(latent.dtype)
    return w_avg + psi * (latent - w_avg)


def lerp(a: torch.Tensor, b: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Linear interpolation in the latents' own space (a and b of one shape)."""
    if a.shape != b.shape:
        raise LatentError(f"cannot interpolate latents of shapes {list(a.shape)} and {list(b.shape)}")
    return a + (b - a) * t
