"""FID and KID on Inception-v3 features, streamed in batches, as in stylegan2-ada.

* :func:`compute_feature_stats` streams uint8 image batches through a detector and accumulates the feature
  sum and the sum of outer products in float64 (mean and unbiased covariance follow, as ``np.cov``); the
  result does not depend on how the stream is cut into batches (up to float32 rounding in the detector).
* :func:`frechet_distance` is ``|mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2)``; the last trace is
  computed from the symmetric PSD matrix ``S1^1/2 S2 S1^1/2``, which has the same eigenvalues as ``S1 S2``, so
  ``tr((S1 S2)^1/2) = sum(sqrt(eigvalsh(S1^1/2 S2 S1^1/2)))``. Symmetric eigendecompositions are stable, real
  and need no eps offset or discarding of imaginary parts (which ``scipy.linalg.sqrtm(S1 @ S2)`` does).
* :func:`kid` is stylegan2-ada's unbiased polynomial-kernel MMD^2, ``k(x, y) = (x.y / d + 1)^3``, averaged
  over random subsets.
* :func:`cached_dataset_stats` keys the real-data statistics by a content hash of the dataset plus the
  detector's sha256, and stores them as ``.npz`` written atomically.

Provenance: FID (Heusel et al. 2017) and KID (Binkowski et al. 2018) are written for this project from
their formulas above; no code of stylegan2-ada's metrics (NVIDIA Source Code License) is copied.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from opstylegan.metrics.weights import atomic_write, resolve_cache_dir

__all__ = [
    "Detector",
    "FIDResult",
    "FeatureStats",
    "KIDResult",
    "cached_dataset_stats",
    "compute_feature_stats",
    "compute_generator_stats",
    "dataset_content_hash",
    "dataset_stats_cache_path",
    "fid_from_stats",
    "frechet_distance",
    "generator_images",
    "images_to_uint8",
    "kid",
    "kid_from_stats",
]

Progress = Callable[[int, "int | None"], None]
_STATS_FORMAT = "1"


class Detector(Protocol):
    """A feature network: uint8 ``[N, C, H, W]`` -> float ``[N, D]``, with a name and a weights sha256."""

    name: str
    sha256: str

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Generator output in [-1, 1] -> uint8 0..255, as stylegan2-ada: ``(x * 127.5 + 128).clamp(0, 255)``."""
    if not images.is_floating_point():
        raise ValueError(f"images must be a float tensor in [-1, 1], got dtype {images.dtype}")
    return (images.detach() * 127.5 + 128).clamp(0, 255).to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------
# Feature statistics.

class FeatureStats:
    """Running feature statistics (float64) of an image stream.

    Attributes:
        feature_dim: D.
        num_items: Images seen.
        feature_sum: Sum of features [D].
        feature_outer: Sum of outer products [D, D].
        features: All features [N, D] (float32) when captured (needed for KID), else None. Captured batches are
            kept as a list and concatenated once, when ``features`` is first read (one copy, not one per batch).
        feature_net: Detector name; feature_net_sha256: its weights' sha256.
        image_shape: [C, H, W] of the stream's images.
    """

    def __init__(self, feature_dim: int, num_items: int = 0, feature_sum: np.ndarray | None = None,
                 feature_outer: np.ndarray | None = None, features: np.ndarray | None = None,
                 feature_net: str = "", feature_net_sha256: str = "", image_shape: tuple[int, ...] = ()) -> None:
        self.feature_dim, self.num_items = feature_dim, num_items
        self.feature_sum = np.zeros(feature_dim, np.float64) if feature_sum is None else feature_sum
        self.feature_outer = (np.zeros((feature_dim, feature_dim), np.float64) if feature_outer is None
                              else feature_outer)
        self._chunks: list[np.ndarray] = [] if features is None else [features]
        self.feature_net, self.feature_net_sha256, self.image_shape = feature_net, feature_net_sha256, image_shape

    def __repr__(self) -> str:
        return (f"FeatureStats(feature_dim={self.feature_dim}, num_items={self.num_items}, "
                f"features={'captured' if self._chunks else None}, feature_net={self.feature_net!r})")

    @property
    def features(self) -> np.ndarray | None:
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]  # [sum of B_i, D]
        return self._chunks[0] if self._chunks else None

    @features.setter
    def features(self, value: np.ndarray | None) -> None:
        self._chunks = [] if value is None else [value]

    def append(self, feats: np.ndarray, *, capture: bool = False) -> None:
        """Add a batch of features [B, D]."""
        if feats.ndim != 2 or feats.shape[1] != self.feature_dim:
            raise ValueError(f"features must have shape [B, {self.feature_dim}], got {list(feats.shape)}")
        x = feats.astype(np.float64)
        self.num_items += x.shape[0]
        self.feature_sum += x.sum(axis=0)
        self.feature_outer += x.T @ x
        if capture:
            self._chunks.append(feats.astype(np.float32))

    @classmethod
    def merge(cls, parts: Sequence[FeatureStats]) -> FeatureStats:
        """The statistics of the concatenated streams of ``parts``, in order (e.g. the shares of several ranks).

        Sums add up; features are kept when every non-empty part captured them. Parts with no items (a rank
        without a share) may have any feature_dim.

        Raises:
            ValueError: No part has items, or the parts come from different feature networks.
        """
        full = [p for p in parts if p.num_items > 0]
        if not full:
            raise ValueError("no statistics to merge: every part is empty")
        first = full[0]
        for p in full[1:]:
            if (p.feature_dim, p.feature_net_sha256, p.image_shape) != \
                    (first.feature_dim, first.feature_net_sha256, first.image_shape):
                raise ValueError(f"cannot merge statistics of different feature networks or image shapes: "
                                 f"{first!r} vs {p!r}")
        out = cls(first.feature_dim, feature_net=first.feature_net, feature_net_sha256=first.feature_net_sha256,
                  image_shape=first.image_shape)
        for p in full:
            out.num_items += p.num_items
            out.feature_sum += p.feature_sum
            out.feature_outer += p.feature_outer
        if all(p._chunks for p in full):
            out._chunks = [c for p in full for c in p._chunks]
        return out

    @property
    def mean(self) -> np.ndarray:
        """Feature mean [D] (float64)."""
        self._need(1)
        return self.feature_sum / self.num_items

    @property
    def cov(self) -> np.ndarray:
        """Unbiased feature covariance [D, D] (float64), as ``np.cov(features, rowvar=False)``."""
        self._need(2)
        mu = self.mean
        return (self.feature_outer - self.num_items * np.outer(mu, mu)) / (self.num_items - 1)

    def _need(self, n: int) -> None:
        if self.num_items < n:
            raise ValueError(f"need at least {n} images for these statistics, got {self.num_items}")

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write to ``path`` (.npz, no pickles) atomically."""
        arrays: dict[str, Any] = {
            "format": np.array(_STATS_FORMAT), "feature_dim": np.array(self.feature_dim),
            "num_items": np.array(self.num_items), "feature_sum": self.feature_sum,
            "feature_outer": self.feature_outer, "feature_net": np.array(self.feature_net),
            "feature_net_sha256": np.array(self.feature_net_sha256),
            "image_shape": np.array(self.image_shape, np.int64)}
        if self.features is not None:
            arrays["features"] = self.features

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(Path(path), write)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureStats:
        """Read statistics written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as z:
            if str(z["format"]) != _STATS_FORMAT:
                raise ValueError(f"{path}: statistics format {z['format']}, expected {_STATS_FORMAT}")
            return cls(feature_dim=int(z["feature_dim"]), num_items=int(z["num_items"]),
                       feature_sum=z["feature_sum"], feature_outer=z["feature_outer"],
                       features=z["features"] if "features" in z.files else None,
                       feature_net=str(z["feature_net"]), feature_net_sha256=str(z["feature_net_sha256"]),
                       image_shape=tuple(int(v) for v in z["image_shape"]))


def _check_batch(batch: Any, index: int, first_shape: tuple[int, ...] | None) -> torch.Tensor:
    if isinstance(batch, np.ndarray):
        batch = torch.from_numpy(batch)
    if not isinstance(batch, torch.Tensor):
        raise TypeError(f"image batch {index} must be a torch.Tensor or numpy array, got {type(batch).__name__}")
    if batch.dtype != torch.uint8:
        raise ValueError(f"image batch {index} must have dtype uint8 (0..255), got {batch.dtype}; convert "
                         "[-1, 1] float images with images_to_uint8()")
    if batch.ndim != 4 or batch.shape[1] not in (1, 3):
        hint = " (channels last? expected channels first)" if batch.ndim == 4 and batch.shape[-1] in (1, 3) else ""
        raise ValueError(f"image batch {index} must have shape [N, 1 or 3, H, W], got {list(batch.shape)}{hint}")
    if first_shape is not None and tuple(batch.shape[1:]) != first_shape:
        raise ValueError(f"image batch {index} has images of shape {list(batch.shape[1:])}, but the stream "
                         f"started with {list(first_shape)}; all images of one stream must have one size")
    return batch


def compute_feature_stats(images: Iterable[torch.Tensor | np.ndarray], detector: Detector, *,
                          max_items: int | None = None, capture_features: bool = False,
                          progress: Progress | None = None) -> FeatureStats:
    """Stream uint8 image batches ``[B, C, H, W]`` through ``detector`` and accumulate statistics.

    Args:
        images: Iterable of uint8 batches (torch or numpy, channels first, one image size per stream).
        detector: Feature network, e.g. :class:`~opstylegan.metrics.inception.InceptionFeatures`.
        max_items: Stop after this many images (the last batch is truncated).
        capture_features: Keep all features (needed for :func:`kid_from_stats`).
        progress: Called as ``progress(num_done, max_items)`` after every batch.

    Raises:
        ValueError: A batch is not uint8, not [N, 1|3, H, W], or changes image size mid-stream.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be >= 1 or None, got {max_items}")
    stats: FeatureStats | None = None
    first_shape: tuple[int, ...] | None = None
    for index, batch in enumerate(images):
        batch = _check_batch(batch, index, first_shape)
        first_shape = tuple(batch.shape[1:])
        if max_items is not None:
            batch = batch[: max_items - (stats.num_items if stats else 0)]
        if batch.shape[0] == 0:
            continue
        feats = detector(batch).detach().cpu().numpy()
        if stats is None:
            stats = FeatureStats(feats.shape[1], feature_net=getattr(detector, "name", type(detector).__name__),
                                 feature_net_sha256=getattr(detector, "sha256", ""), image_shape=first_shape)
        stats.append(feats, capture=capture_features)
        if progress is not None:
            progress(stats.num_items, max_items)
        if max_items is not None and stats.num_items >= max_items:
            break
    if stats is None:
        raise ValueError("the image stream is empty; need at least 1 image")
    return stats


def generator_images(G: torch.nn.Module, num_images: int, *, batch_size: int = 32, seed: int = 0,
                     truncation_psi: float = 1.0, device: torch.device | str | None = None
                     ) -> Iterator[torch.Tensor]:
    """uint8 batches of ``G``'s images; image i comes from seed ``seed + i`` (batch-size independent)."""
    if num_images < 1 or batch_size < 1:
        raise ValueError(f"num_images and batch_size must be >= 1, got {num_images} and {batch_size}")
    for start in range(0, num_images, batch_size):
        seeds = range(seed + start, seed + min(start + batch_size, num_images))
        z = G.z_from_seeds(list(seeds))
        if device is not None:
            z = z.to(device)
        with torch.no_grad():
            yield images_to_uint8(G(z, truncation_psi=truncation_psi))


def compute_generator_stats(G: torch.nn.Module, detector: Detector, num_images: int = 50000, *,
                            batch_size: int = 32, seed: int = 0, truncation_psi: float = 1.0,
                            capture_features: bool = False, device: torch.device | str | None = None,
                            progress: Progress | None = None) -> FeatureStats:
    """Feature statistics of ``num_images`` generated images (seeds ``seed .. seed + num_images - 1``)."""
    stream = generator_images(G, num_images, batch_size=batch_size, seed=seed, truncation_psi=truncation_psi,
                              device=device)
    return compute_feature_stats(stream, detector, max_items=num_images, capture_features=capture_features,
                                 progress=progress)


# ----------------------------------------------------------------------------------------------------------
# Distances.

def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T  # V diag(sqrt(w)) V^T


def _trace_sqrt_product_low_rank(feats1: np.ndarray, feats2: np.ndarray) -> float:
    """``tr((S1 S2)^1/2)`` for the sample covariances of ``feats1`` [n1, D] and ``feats2`` [n2, D].

    With centred ``X1``, ``X2`` and ``S_i = X_i^T X_i / (n_i - 1)``, the non-zero eigenvalues of ``S1 S2`` are those
    of ``X1 X2^T X2 X1^T / c`` (``c = (n1 - 1)(n2 - 1)``), i.e. the squared singular values of ``X1 X2^T`` over
    ``c``; so the trace is ``sum(svd(X1 X2^T)) / sqrt(c)``: O(n^2 D) instead of O(D^3).
    """
    x1 = feats1.astype(np.float64) - feats1.mean(axis=0, dtype=np.float64)
    x2 = feats2.astype(np.float64) - feats2.mean(axis=0, dtype=np.float64)
    c = (len(x1) - 1) * (len(x2) - 1)
    return float(np.linalg.svd(x1 @ x2.T, compute_uv=False).sum() / np.sqrt(c))


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between Gaussians N(mu1, sigma1) and N(mu2, sigma2) (see the module docstring).

    Raises:
        ValueError: Shapes are not [D], [D, D] for one D, or values are not finite.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    d = mu1.shape[0] if mu1.ndim == 1 else -1
    for name, a, shape in (("mu1", mu1, (d,)), ("mu2", mu2, (d,)), ("sigma1", sigma1, (d, d)),
                           ("sigma2", sigma2, (d, d))):
        if a.shape != shape:
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(a.shape)}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains non-finite values")
    root1 = _sqrt_psd((sigma1 + sigma1.T) / 2)
    m = root1 @ sigma2 @ root1
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(np.square(mu1 - mu2).sum() + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def kid(feats1: np.ndarray, feats2: np.ndarray, *, num_subsets: int = 100, max_subset_size: int = 1000,
        seed: int = 0) -> float:
    """Kernel Inception Distance (stylegan2-ada): unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3``.

    Each of ``num_subsets`` rounds draws ``m = min(n1, n2, max_subset_size)`` rows of each set without
    replacement (``numpy.random.default_rng(seed)``) and the results are averaged.
    """
    x_all, y_all = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
        raise ValueError(f"feats1 and feats2 must be [N, D] with one D, got {list(x_all.shape)} "
                         f"and {list(y_all.shape)}")
    if num_subsets < 1 or max_subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and max_subset_size >= 2, got {num_subsets}, {max_subset_size}")
    m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples in each set, got {x_all.shape[0]} and {y_all.shape[0]}")
    n = x_all.shape[1]
    rng = np.random.default_rng(seed)
    t = 0.0
    for _ in range(num_subsets):
        x = x_all[rng.choice(x_all.shape[0], m, replace=False)]
        y = y_all[rng.choice(y_all.shape[0], m, replace=False)]
        a = (x @ x.T / n + 1) ** 3 + (y @ y.T / n + 1) ** 3  # [m, m]
        b = (x @ y.T / n + 1) ** 3  # [m, m]
        t += (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
    return float(t / num_subsets / m)


# ----------------------------------------------------------------------------------------------------------
# Results.

@dataclass(frozen=True)
class FIDResult:
    """A FID value with what it was measured on."""

    fid: float
    num_real: int
    num_fake: int
    feature_net: str
    feature_net_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class KIDResult:
    """A KID value with what it was measured on."""

    kid: float
    num_real: int
    num_fake: int
    num_subsets: int
    subset_size: int
    feature_net: str
    feature_net_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_pair(real: FeatureStats, fake: FeatureStats) -> None:
    if (real.feature_net_sha256, real.feature_dim) != (fake.feature_net_sha256, fake.feature_dim):
        raise ValueError(f"statistics come from different feature networks: {real.feature_net} "
                         f"({real.feature_net_sha256[:12]}, D={real.feature_dim}) vs {fake.feature_net} "
                         f"({fake.feature_net_sha256[:12]}, D={fake.feature_dim})")


def fid_from_stats(real: FeatureStats, fake: FeatureStats) -> FIDResult:
    """FID between two :class:`FeatureStats`.

    Raises:
        ValueError: Fewer than 2 images in a set, or statistics of different feature networks.

    Warns when a set has fewer images than feature dimensions: the covariance is then rank deficient and FID
    strongly biased upward (stylegan2-ada reports FID on 50k images). In that case, when both statistics hold
    their features, the trace term is computed exactly in the small sample space instead of with D x D
    eigendecompositions (see :func:`_trace_sqrt_product_low_rank`); the value is the same.
    """
    _check_pair(real, fake)
    for name, s in (("real", real), ("fake", fake)):
        if s.num_items < 2:
            raise ValueError(f"FID needs at least 2 {name} images, got {s.num_items}")
        if s.num_items < s.feature_dim:
            warnings.warn(f"FID on {s.num_items} {name} images < {s.feature_dim} feature dimensions: the "
                          "covariance is rank deficient and the value is biased; use >= 10000 images "
                          "(50000 as in the paper) for reportable figures", stacklevel=2)
    if real.features is not None and fake.features is not None and \
            real.num_items + fake.num_items <= real.feature_dim:
        mu1, mu2 = real.mean, fake.mean
        value = float(np.square(mu1 - mu2).sum() + np.trace(real.cov) + np.trace(fake.cov)
                      - 2 * _trace_sqrt_product_low_rank(real.features, fake.features))
    else:
        value = frechet_distance(real.mean, real.cov, fake.mean, fake.cov)
    return FIDResult(value, real.num_items, fake.num_items, real.feature_net, real.feature_net_sha256)


def kid_from_stats(real: FeatureStats, fake: FeatureStats, *, num_subsets: int = 100,
                   max_subset_size: int = 1000, seed: int = 0) -> KIDResult:
    """KID between two :class:`FeatureStats` computed with ``capture_features=True``."""
    _check_pair(real, fake)
    if real.features is None or fake.features is None:
        raise ValueError("KID needs the features themselves: compute both statistics with capture_features=True")
    value = kid(real.features, fake.features, num_subsets=num_subsets, max_subset_size=max_subset_size, seed=seed)
    m = min(real.num_items, fake.num_items, max_subset_size)
    return KIDResult(value, real.num_items, fake.num_items, num_subsets, m, real.feature_net,
                     real.feature_net_sha256)


# ----------------------------------------------------------------------------------------------------------
# Dataset statistics cache.

def dataset_content_hash(source: str | os.PathLike[str]) -> str:
    """sha256 of a dataset's content: a file (zip) is hashed as bytes; a directory as the sorted list of
    ``(relative posix path, sha256 of bytes)`` of every file under it, so renaming the folder keeps the key.

    Raises:
        FileNotFoundError: ``source`` does not exist.
    """
    from opstylegan.metrics.weights import sha256_file

    path = Path(source)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset {path} does not exist (expected a directory or a zip file)")
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.relative_to(path).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def dataset_stats_cache_path(dataset_hash: str, detector: Detector, *, cache_dir: str | os.PathLike[str] | None = None,
                             max_items: int | None = None, capture_features: bool = False) -> Path:
    """Where :func:`cached_dataset_stats` keeps these statistics: ``<cache>/stats/<key>.npz``."""
    key_text = f"{_STATS_FORMAT}|{dataset_hash}|{detector.sha256}|{max_items}|{capture_features}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:32]
    return resolve_cache_dir(cache_dir) / "stats" / f"{key}.npz"


def cached_dataset_stats(dataset_hash: str, images: Callable[[], Iterable[torch.Tensor | np.ndarray]],
                         detector: Detector, *, cache_dir: str | os.PathLike[str] | None = None,
                         max_items: int | None = None, capture_features: bool = False,
                         progress: Progress | None = None) -> FeatureStats:
    """Statistics of a dataset, computed once and cached in ``<cache>/stats/<key>.npz``.

    The key hashes ``dataset_hash`` (e.g. :func:`dataset_content_hash`), the detector's sha256, ``max_items``
    and ``capture_features``; ``images`` is a zero-argument callable returning the image stream, called only
    on a cache miss.
    """
    path = dataset_stats_cache_path(dataset_hash, detector, cache_dir=cache_dir, max_items=max_items,
                                    capture_features=capture_features)
    if path.is_file():
        return FeatureStats.load(path)
    stats = compute_feature_stats(images(), detector, max_items=max_items, capture_features=capture_features,
                                  progress=progress)
    stats.save(path)
    return stats
