"""Editability metrics of a set of inverted latents (the paper's table 3: realism and smoothness of interpolations).

Over all unordered pairs of N latents (100 images -> 4950 pairs), each pair's straight path a -> b in the
latents' own space gives

* its 50-50 midpoint image; the FID of all midpoint images against a reference image set ("realism");
* its perceptual length: the path is split into ``num_segments`` = 5 equal segments (6 points, t = 0, 0.2,
  ..., 1) and the LPIPS distances between consecutive points' images are summed. The reported ``ppl`` is the
  mean over pairs ("disentanglement"; a plain sum of LPIPS, not StyleGAN's eps-scaled PPL).

The work is streamed: ``batch_size`` pairs at a time are rendered, their midpoints' Inception features go
into running float64 sums (:class:`opstylegan.metrics.FeatureStats`) and their path lengths into a float64
vector of one number per pair; no midpoint image is kept. Nothing is random, so the result is deterministic,
and each pair's numbers depend only on that pair, so the result does not depend on ``batch_size`` (beyond the
float32 rounding of batched convolutions).
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn

from opstylegan.editing.interpolate import iter_pairs, lerp_path, num_pairs
from opstylegan.latent import check_space
from opstylegan.metrics.fid import Detector, FeatureStats, fid_from_stats, images_to_uint8

if TYPE_CHECKING:
    from opstylegan.models.generator import Generator

__all__ = [
    "EditabilityProgress",
    "EditabilityResult",
    "editability_metrics",
    "path_points",
    "reference_batches",
    "reference_stats",
]


class EditabilityProgress(NamedTuple):
    """What a ``progress`` callback receives after every batch of pairs."""

    pairs_done: int
    pairs_total: int


@dataclass(frozen=True)
class EditabilityResult:
    """Output of :func:`editability_metrics`.

    Attributes:
        fid: FID of the midpoint images against the reference set (NaN with a single pair).
        ppl: Mean perceptual path length over pairs (sum of LPIPS over the segments).
        path_lengths: Per-pair path lengths ``[P]`` (float64), in pair order.
        pairs: The pairs ``(i, j)`` measured, in order.
        num_latents, num_reference: N, and the reference images' count.
        num_segments: Segments per path (5 in the paper).
        space, fingerprint: The latents' space and model.
        feature_net, feature_net_sha256: The FID feature network.
    """

    fid: float
    ppl: float
    path_lengths: torch.Tensor = field(repr=False)
    pairs: tuple[tuple[int, int], ...] = field(repr=False)
    num_latents: int
    num_reference: int
    num_segments: int
    space: str
    fingerprint: str
    feature_net: str
    feature_net_sha256: str

    @property
    def num_pairs(self) -> int:
        return len(self.pairs)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (per-pair lengths summarised by std and quartiles)."""
        pl = self.path_lengths
        q = torch.quantile(pl, torch.tensor([0.25, 0.5, 0.75], dtype=pl.dtype)).tolist() if len(pl) else []
        fid = self.fid if math.isfinite(self.fid) else None  # one pair: no covariance, no FID
        return {"fid": fid, "ppl": self.ppl, "ppl_std": float(pl.std()) if len(pl) > 1 else 0.0,
                "ppl_quartiles": q, "num_pairs": self.num_pairs, "num_latents": self.num_latents,
                "num_reference": self.num_reference, "num_segments": self.num_segments, "space": self.space,
                "fingerprint": self.fingerprint, "feature_net": self.feature_net,
                "feature_net_sha256": self.feature_net_sha256}


def path_points(num_segments: int) -> tuple[torch.Tensor, int]:
    """Interpolation weights of one pair's renders: the ``num_segments + 1`` path points, then t = 0.5 if it is
    not already one of them. Returns ``(ts [K], index of the midpoint in ts)``."""
    if isinstance(num_segments, bool) or not isinstance(num_segments, int) or num_segments < 1:
        raise ValueError(f"num_segments must be an int >= 1, got {num_segments!r}")
    ts = torch.linspace(0, 1, num_segments + 1, dtype=torch.float64)
    if num_segments % 2 == 0:
        return ts.float(), num_segments // 2
    return torch.cat([ts, ts.new_tensor([0.5])]).float(), num_segments + 1


def editability_metrics(
    G: Generator,
    latents: torch.Tensor,
    space: str,
    reference: FeatureStats,
    *,
    detector: Detector | None = None,
    lpips: nn.Module | None = None,
    num_segments: int = 5,
    max_pairs: int | None = None,
    batch_size: int = 8,
    fingerprint: str | None = None,
    progress: Callable[[EditabilityProgress], None] | None = None,
) -> EditabilityResult:
    """Midpoint FID and perceptual path length over all pairs of ``latents`` (paper table 3).

    Args:
        G: The generator the latents belong to (the work runs on its device).
        latents: ``[N, *G.latent_shape(space)]``, N >= 2 (e.g. ``load_latent_set(...).latents``).
        space: Their space, ``w``, ``w+``, ``W`` or ``W+``.
        reference: Feature statistics of the reference (real) images, from the same detector
            (:func:`reference_stats`).
        detector: FID feature network; default :class:`opstylegan.metrics.InceptionFeatures` on G's device.
        lpips: LPIPS module with ``features`` / ``distance_from_features``; default
            ``LPIPS("vgg", resize_to=256)`` (the projector's distance) on G's device.
        num_segments: Segments per path (5 in the paper: 6 points).
        max_pairs: Measure only an evenly spread, deterministic subset of the pairs
            (:func:`opstylegan.editing.interpolate.iter_pairs`).
        batch_size: Pairs rendered at once (each makes ``num_segments + 2`` images); changes speed only.
        fingerprint: ``G.fingerprint()``, if already known (for the result's record).
        progress: Called after every batch with an :class:`EditabilityProgress`.

    Raises:
        ValueError: Fewer than 2 latents, latents of the wrong shape, bad ``num_segments`` / ``batch_size``.
    """
    space = check_space(space, overparam=G.overparam)
    expect = G.latent_shape(space)
    if latents.ndim != len(expect) + 1 or tuple(latents.shape[1:]) != expect:
        raise ValueError(f"latents in {space!r} for this model must have shape [N, {', '.join(map(str, expect))}], "
                         f"got {list(latents.shape)}")
    n = latents.shape[0]
    if n < 2:
        raise ValueError(f"editability metrics need at least 2 latents (1 pair), got {n}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    ts, mid = path_points(num_segments)
    device = G.w_avg.device
    if detector is None:
        from opstylegan.metrics.inception import InceptionFeatures

        detector = InceptionFeatures().to(device)
    if lpips is None:
        from opstylegan.metrics.lpips import LPIPS

        lpips = LPIPS("vgg", resize_to=256).to(device)
    total = min(num_pairs(n), max_pairs) if max_pairs is not None else num_pairs(n)
    pairs = iter_pairs(n, all_pairs=True, max_pairs=max_pairs)
    fake: FeatureStats | None = None
    lengths: list[torch.Tensor] = []
    done: list[tuple[int, int]] = []
    with torch.no_grad():
        for chunk in _chunks(pairs, batch_size):
            ii = torch.tensor([i for i, _ in chunk])
            jj = torch.tensor([j for _, j in chunk])
            path = lerp_path(latents[ii].to(device).float(), latents[jj].to(device).float(), ts.to(device))
            p, k = path.shape[:2]
            images = G.synthesis(path.flatten(0, 1), space, force_fp32=True).float().clamp(-1, 1)  # [P, K, ...] -> [P*K, C, H, W]
            images = images.unflatten(0, (p, k))  # [P*K, C, H, W] -> [P, K, C, H, W]
            lengths.append(_path_lengths(lpips, images[:, :num_segments + 1]).cpu())
            feats = detector(images_to_uint8(images[:, mid])).detach().cpu().numpy()  # [P, D]
            if fake is None:
                fake = FeatureStats(feats.shape[1], feature_net=getattr(detector, "name", type(detector).__name__),
                                    feature_net_sha256=getattr(detector, "sha256", ""),
                                    image_shape=tuple(images.shape[2:]))
            fake.append(feats)
            done.extend(chunk)
            if progress is not None:
                progress(EditabilityProgress(len(done), total))
    assert fake is not None  # n >= 2 gives at least one pair
    path_lengths = torch.cat(lengths)
    fid = fid_from_stats(reference, fake).fid if fake.num_items >= 2 else float("nan")
    return EditabilityResult(fid=fid, ppl=float(path_lengths.mean()), path_lengths=path_lengths, pairs=tuple(done),
                             num_latents=n, num_reference=reference.num_items, num_segments=num_segments,
                             space=space, fingerprint=fingerprint or G.fingerprint(), feature_net=fake.feature_net,
                             feature_net_sha256=fake.feature_net_sha256)


def _chunks(pairs: Iterator[tuple[int, int]], size: int) -> Iterator[list[tuple[int, int]]]:
    chunk: list[tuple[int, int]] = []
    for pair in pairs:
        chunk.append(pair)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _path_lengths(lpips: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Sum of LPIPS between consecutive images of each path: ``[P, S + 1, C, H, W]`` -> ``[P]`` (float64).

    Each image's LPIPS features are computed once and shared by its two neighbouring segments.
    """
    p, k = images.shape[:2]
    feats = lpips.features(images.flatten(0, 1))  # stage list of [P*K, c, h, w]
    f0 = [f.unflatten(0, (p, k))[:, :-1].flatten(0, 1) for f in feats]  # [P, K-1, ...] -> [P*(K-1), ...]
    f1 = [f.unflatten(0, (p, k))[:, 1:].flatten(0, 1) for f in feats]
    seg = lpips.distance_from_features(f0, f1).double().view(p, k - 1)  # [P*(K-1)] -> [P, K-1]
    return seg.sum(dim=1)


# ----------------------------------------------------------------------------------------------------------
# Reference images.

def reference_batches(source: str | os.PathLike[str], *, resolution: int, channels: int, batch_size: int = 32,
                      max_items: int | None = None) -> Iterator[torch.Tensor]:
    """uint8 batches ``[B, C, H, W]`` of a dataset built by ``opstylegan dataset`` (used as is; its size must be the
    model's), or of a folder / zip / image file, center-cropped and resized (Lanczos) to ``resolution`` with
    ``channels`` channels, as the generator's images are.

    Raises:
        FileNotFoundError: ``source`` does not exist or holds no image.
        opstylegan.data.images.ImageError: An image is unreadable or smaller than ``resolution``.
    """
    from opstylegan.data.build import META_FILE
    from opstylegan.data.dataset import ImageDataset, dataset_batches
    from opstylegan.data.images import ImageFiles, center_crop_resize

    if (Path(source) / META_FILE).is_file():  # a training set built by `opstylegan dataset`
        ds = ImageDataset(source)
        if (ds.resolution, ds.num_channels) != (resolution, channels):
            raise ValueError(f"reference dataset {str(source)!r} has {ds.num_channels}-channel {ds.resolution}x"
                             f"{ds.resolution} images; the model makes {channels}-channel {resolution}x{resolution}")
        yield from dataset_batches(ds, len(ds) if max_items is None else min(len(ds), max_items), batch_size)
        return
    files = ImageFiles(source)
    count = len(files) if max_items is None else min(len(files), max_items)
    if count == 0:
        raise FileNotFoundError(f"no images found in {str(source)!r}")
    try:
        for start in range(0, count, batch_size):
            imgs = [center_crop_resize(files.load(i, channels=channels), resolution, name=files.display_name(i))
                    for i in range(start, min(count, start + batch_size))]
            yield torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).contiguous()  # [B, H, W, C] -> [B, C, H, W]
    finally:
        files.close()


def reference_stats(source: str | os.PathLike[str], detector: Detector, *, resolution: int, channels: int,
                    batch_size: int = 32, max_items: int | None = None, cache_dir: str | os.PathLike[str] | None = None,
                    use_cache: bool = True, progress: Callable[[int, int | None], None] | None = None
                    ) -> FeatureStats:
    """Feature statistics of reference images: a ``.npz`` written by :meth:`FeatureStats.save`, or a folder /
    zip of images (prepared by :func:`reference_batches`; cached by content hash, resolution and channels).
    """
    from opstylegan.metrics.fid import cached_dataset_stats, compute_feature_stats, dataset_content_hash

    path = Path(source)
    if path.suffix == ".npz" and path.is_file():
        stats = FeatureStats.load(path)
        if stats.feature_net_sha256 != getattr(detector, "sha256", stats.feature_net_sha256):
            raise ValueError(f"reference statistics {str(path)!r} come from feature network "
                             f"{stats.feature_net_sha256[:12]}..., not the one in use ({detector.sha256[:12]}...)")
        return stats

    def stream() -> Iterator[torch.Tensor]:
        return reference_batches(path, resolution=resolution, channels=channels, batch_size=batch_size,
                                 max_items=max_items)

    if not use_cache:
        return compute_feature_stats(stream(), detector, progress=progress)
    key = hashlib.sha256(f"{dataset_content_hash(path)}|res={resolution}|ch={channels}".encode()).hexdigest()
    return cached_dataset_stats(key, stream, detector, cache_dir=cache_dir, max_items=max_items, progress=progress)
