"""Linear interpolation between latents in their own space (w, w+, W or W+), and its pictures.

A set of latents is interpolated only if every latent lives in the same space and was made for the same
model (the fingerprint stored in each latent file): mixing a ``W`` with a ``w+`` or latents of two models
has no meaning, so :func:`check_compatible` refuses it and names both offenders.

Paths: ``t`` runs over ``linspace(0, 1, steps)``; point t of the path from a to b is ``a + t (b - a)``
(:func:`opstylegan.latent.lerp`), so the first and last images are exactly the endpoints' images.

Animations: GIF through Pillow's writer; MP4 through imageio + imageio-ffmpeg when both are installed
(:func:`mp4_available`), otherwise :class:`MissingVideoBackendError` says what to install.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image

from opstylegan.io.atomic import atomic_path
from opstylegan.latent import LatentError, check_space, lerp

if TYPE_CHECKING:
    from opstylegan.models.generator import Generator

__all__ = [
    "LatentMismatchError",
    "LatentSet",
    "MissingVideoBackendError",
    "check_compatible",
    "interpolation_ts",
    "iter_pairs",
    "load_latent_set",
    "lerp_path",
    "mp4_available",
    "num_pairs",
    "render_latents",
    "save_gif",
    "save_mp4",
]


class LatentMismatchError(LatentError):
    """Latents that cannot be interpolated together: different spaces, shapes or models."""


class MissingVideoBackendError(ImportError):
    """MP4 output needs imageio and imageio-ffmpeg, which are not installed."""


@dataclass(frozen=True)
class LatentSet:
    """Latents of one space and one model, stacked: ``latents`` is ``[N, *latent_shape(space)]``.

    ``names`` label each latent (e.g. its file's stem) in file names and JSON.
    """

    latents: torch.Tensor
    space: str
    fingerprint: str
    names: tuple[str, ...]

    def __len__(self) -> int:
        return self.latents.shape[0]


def check_compatible(items: Sequence[tuple[str, str, str, tuple[int, ...]]]) -> None:
    """Refuse a set of latents that do not share space, shape and model fingerprint.

    Args:
        items: One ``(name, space, fingerprint, shape)`` per latent.

    Raises:
        LatentMismatchError: naming the first latent and the first one that differs from it.
    """
    if not items:
        raise LatentMismatchError("no latents given; need at least 2 to interpolate")
    name0, space0, fp0, shape0 = items[0]
    for name, space, fp, shape in items[1:]:
        if space != space0:
            raise LatentMismatchError(f"latents of different spaces cannot be interpolated: {name0!r} is in "
                                      f"{space0!r}, {name!r} is in {space!r}; invert all images into one space")
        if fp != fp0:
            raise LatentMismatchError(f"latents of different models cannot be interpolated: {name0!r} belongs to "
                                      f"model {fp0[:12]}..., {name!r} to model {fp[:12]}...")
        if tuple(shape) != tuple(shape0):
            raise LatentMismatchError(f"latents of different shapes cannot be interpolated: {name0!r} is "
                                      f"{list(shape0)}, {name!r} is {list(shape)}")


def load_latent_set(paths: Sequence[str | os.PathLike[str]], G: Generator | None = None, *,
                    device: torch.device | str = "cpu") -> LatentSet:
    """Load latent files (``opstylegan invert`` output), check they belong together and stack them.

    A folder in ``paths`` stands for its ``*.safetensors`` files, sorted by name.

    Raises:
        FileNotFoundError: A path does not exist, or a folder holds no ``.safetensors`` file.
        LatentMismatchError: Two latents differ in space, shape or model.
        opstylegan.inversion.latents_io.LatentFileError: A file is not a latent file, or (with ``G``) the set
            was made for another model than ``G``.
    """
    from opstylegan.inversion.latents_io import LatentFileError, load_latent

    files = expand_latent_paths(paths)
    loaded = [load_latent(p) for p in files]
    check_compatible([(str(p), lf.space, lf.fingerprint, tuple(lf.latent.shape))
                      for p, lf in zip(files, loaded, strict=True)])
    if G is not None:
        own = G.fingerprint()
        if loaded[0].fingerprint != own:
            raise LatentFileError(f"{str(files[0])!r} was inverted with another model (fingerprint "
                                  f"{loaded[0].fingerprint[:12]}...), not the given one ({own[:12]}...)")
        load_latent(files[0], G)  # checks the shape against the model (and W/W+ on a baseline)
    latents = torch.stack([lf.latent for lf in loaded]).to(device)  # N x [*shape] -> [N, *shape]
    return LatentSet(latents, loaded[0].space, loaded[0].fingerprint, tuple(p.stem for p in files))


def expand_latent_paths(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Files and folders -> latent files; a folder gives its ``*.safetensors`` files sorted by name."""
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(p.glob("*.safetensors"))
            if not found:
                raise FileNotFoundError(f"folder {str(p)!r} holds no .safetensors latent files")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"latent file not found: {str(p)!r}")
    return files


def interpolation_ts(steps: int) -> torch.Tensor:
    """The ``steps`` interpolation weights ``linspace(0, 1, steps)`` (float64 -> float32), ``steps >= 2``."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an int >= 2 (the two endpoints included), got {steps!r}")
    return torch.linspace(0, 1, steps, dtype=torch.float64).float()


def lerp_path(a: torch.Tensor, b: torch.Tensor, ts: torch.Tensor | Sequence[float]) -> torch.Tensor:
    """Latents along the straight lines from ``a`` to ``b``.

    Args:
        a, b: Latent batches of one shape ``[P, *latent_shape]``.
        ts: Interpolation weights ``[K]`` (0 gives ``a``, 1 gives ``b``).

    Returns:
        ``[P, K, *latent_shape]``.
    """
    ts = torch.as_tensor(ts, dtype=a.dtype, device=a.device)
    if ts.ndim != 1 or ts.numel() == 0:
        raise ValueError(f"ts must be a non-empty 1-d sequence of weights, got shape {list(ts.shape)}")
    t = ts.view(1, -1, *([1] * (a.ndim - 1)))  # [K] -> [1, K, 1, ...] to broadcast over the latent axes
    return lerp(a.unsqueeze(1), b.unsqueeze(1), t)  # [P, 1, ...] -> [P, K, ...]


def num_pairs(n: int) -> int:
    """Number of unordered pairs of ``n`` latents, n (n - 1) / 2 (4950 for 100)."""
    return n * (n - 1) // 2


def iter_pairs(n: int, *, all_pairs: bool = True, max_pairs: int | None = None) -> Iterator[tuple[int, int]]:
    """Index pairs ``(i, j)``, ``i < j``, in a fixed order, generated lazily.

    ``all_pairs``: every unordered pair in lexicographic order; otherwise consecutive ones (0-1, 1-2, ...).
    ``max_pairs``: keep an evenly spread subset of that order, pairs number ``floor(k * P / max_pairs)`` for
    k = 0 .. max_pairs - 1 (deterministic, and it touches all latents rather than the first few).
    """
    if n < 2:
        raise ValueError(f"need at least 2 latents to make pairs, got {n}")
    if max_pairs is not None and (isinstance(max_pairs, bool) or not isinstance(max_pairs, int) or max_pairs < 1):
        raise ValueError(f"max_pairs must be None or an int >= 1, got {max_pairs!r}")
    total = num_pairs(n) if all_pairs else n - 1
    order: Iterator[tuple[int, int]] = (itertools.combinations(range(n), 2) if all_pairs
                                        else ((i, i + 1) for i in range(n - 1)))
    if max_pairs is None or max_pairs >= total:
        yield from order
        return
    k = 0
    want = 0
    for index, pair in enumerate(order):
        if index == want:
            yield pair
            k += 1
            if k == max_pairs:
                return
            want = k * total // max_pairs


def render_latents(G: Generator, latents: torch.Tensor, space: str, *, batch_size: int = 16) -> torch.Tensor:
    """Images ``[N, C, H, W]`` (float32 in [-1, 1], clamped, on the CPU) of latents ``[N, *shape]``, in batches.

    Image i depends only on latent i, never on ``batch_size`` (beyond float rounding of batched convs).

    Raises:
        ValueError: A latent holds NaN / inf, or an image comes out non-finite (a broken model); the message
            names their indices. (Clamping would silently turn such images into black frames.)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_space(space, overparam=G.overparam)
    bad = _nonfinite_rows(latents)
    if bad:
        raise ValueError(f"latent(s) {bad} hold NaN or infinite values; they cannot be rendered")
    device = G.w_avg.device
    out = []
    with torch.no_grad():
        for start in range(0, latents.shape[0], batch_size):
            chunk = latents[start:start + batch_size].to(device)
            out.append(G.synthesis(chunk, space).float().cpu())
    images = torch.cat(out)
    bad = _nonfinite_rows(images)
    if bad:
        raise ValueError(f"the model renders latent(s) {bad} as NaN or infinite images; its weights are broken")
    return images.clamp(-1, 1)


def _nonfinite_rows(x: torch.Tensor, limit: int = 10) -> list[int]:
    """Indices (the first ``limit``) along axis 0 of ``x`` whose entries are not all finite."""
    rows = (~torch.isfinite(x.reshape(x.shape[0], -1))).any(dim=1)  # [N, ...] -> [N]
    return rows.nonzero().flatten()[:limit].tolist()


# ----------------------------------------------------------------------------------------------------------
# Animations.

def _frames_array(frames: np.ndarray) -> np.ndarray:
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 4 or \
            frames.shape[-1] not in (1, 3) or len(frames) == 0:
        desc = f"{frames.dtype} {list(frames.shape)}" if isinstance(frames, np.ndarray) else type(frames).__name__
        raise ValueError(f"frames must be a non-empty uint8 array [K, H, W, 1 or 3], got {desc}")
    return frames


def _check_fps(fps: float) -> float:
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or not 0 < fps <= 100:
        raise ValueError(f"fps must be a number in (0, 100], got {fps!r}")
    return float(fps)


def save_gif(path: str | os.PathLike[str], frames: np.ndarray, *, fps: float = 10.0, pingpong: bool = False) -> Path:
    """Write an endlessly looping GIF of uint8 frames ``[K, H, W, C]`` with Pillow, atomically.

    RGB frames are reduced to a 256-colour palette per frame (median cut, deterministic); grayscale frames
    are stored exactly. ``pingpong`` appends the frames backwards (without repeating the ends), so the loop
    runs a -> b -> a. GIF delays are whole centiseconds, so the frame rate is rounded to that grid.
    """
    frames = _frames_array(frames)
    fps = _check_fps(fps)
    if pingpong and len(frames) > 2:
        frames = np.concatenate([frames, frames[-2:0:-1]])  # a..b then back, ends not repeated
    if frames.shape[-1] == 1:
        pics = [Image.fromarray(f[:, :, 0], "L") for f in frames]
    else:
        pics = [Image.fromarray(f, "RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT) for f in frames]
    duration = max(10, round(1000 / fps / 10) * 10)  # ms, on the centisecond grid of GIF
    path = Path(path)
    with atomic_path(path) as tmp:
        pics[0].save(tmp, format="GIF", save_all=True, append_images=pics[1:], duration=duration, loop=0,
                     optimize=False, disposal=1)
    return path


def mp4_available() -> bool:
    """True when imageio and its ffmpeg backend (imageio-ffmpeg) can be imported."""
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("imageio", "imageio_ffmpeg"))


MP4_HINT = "MP4 output needs imageio and imageio-ffmpeg: pip install imageio imageio-ffmpeg (or use --gif)"


def save_mp4(path: str | os.PathLike[str], frames: np.ndarray, *, fps: float = 10.0, pingpong: bool = False) -> Path:
    """Write an H.264 MP4 (yuv420p) of uint8 frames ``[K, H, W, C]`` through imageio-ffmpeg, atomically.

    Raises:
        MissingVideoBackendError: imageio or imageio-ffmpeg is not installed.
    """
    frames = _frames_array(frames)
    fps = _check_fps(fps)
    if not mp4_available():
        raise MissingVideoBackendError(MP4_HINT)
    import imageio.v2 as iio

    if pingpong and len(frames) > 2:
        frames = np.concatenate([frames, frames[-2:0:-1]])
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)  # [K, H, W, 1] -> [K, H, W, 3]: H.264 players want colour
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.mp4")  # ffmpeg picks the container from the extension
    try:
        writer = iio.get_writer(str(tmp), format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                pixelformat="yuv420p", macro_block_size=1)
        try:
            for f in frames:
                writer.append_data(f)
        finally:
            writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
