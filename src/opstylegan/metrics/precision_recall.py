"""Improved precision and recall (Kynkäänniemi et al. 2019), k-nearest-neighbour manifolds of features.

FID mixes quality and coverage into one number; a generator that draws only some classes of a data set
(mode collapse) can keep a moderate FID. Recall exposes it: the fraction of REAL images that fall inside the
generated images' manifold. Precision is the fraction of GENERATED images inside the real manifold.

A manifold of a feature set {phi_j} is the union of balls centred at phi_j whose radius is the distance to
phi_j's k-th nearest neighbour in the same set (k = 3, as stylegan2-ada's ``pr50k3``). A sample x is inside
if |x - phi_j| <= r_j for some j.

Features: stylegan2-ada uses VGG16's fc2 features (4096-d); VGG16's classifier weights are not available
offline here (the LPIPS package only carries the convolutional layers), so this project uses the same
Inception-v3 pool features as FID (2048-d). Absolute values are therefore not comparable with published
``pr50k3`` figures; comparisons between models measured here are. This module reimplements the published
algorithm from the paper; no code was copied.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from opstylegan.metrics.fid import FeatureStats

__all__ = ["PRResult", "manifold_radii", "inside_manifold", "precision_recall", "pr_from_stats"]


def _as_tensor(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {list(t.shape)}")
    return t.float()


def manifold_radii(feats: np.ndarray | torch.Tensor, k: int = 3, *, batch_size: int = 2048) -> torch.Tensor:
    """Distance of every feature to its k-th nearest OTHER feature of the same set, [N] (float32).

    Raises:
        ValueError: fewer than k + 1 features, or k < 1.
    """
    f = _as_tensor(feats)
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if f.shape[0] < k + 1:
        raise ValueError(f"need at least k + 1 = {k + 1} features for a k-NN manifold, got {f.shape[0]}")
    radii = []
    for start in range(0, f.shape[0], batch_size):
        d = torch.cdist(f[start:start + batch_size].double(), f.double())  # [b, N]; float64: ties stay ties
        radii.append(d.kthvalue(k + 1, dim=1).values.float())  # the 1st neighbour is the feature itself
    return torch.cat(radii)


def inside_manifold(queries: np.ndarray | torch.Tensor, feats: np.ndarray | torch.Tensor, radii: torch.Tensor, *,
                    batch_size: int = 2048) -> torch.Tensor:
    """For each query, whether it lies within radii[j] of some feature j, [Q] (bool)."""
    q, f = _as_tensor(queries), _as_tensor(feats)
    if q.shape[1] != f.shape[1]:
        raise ValueError(f"queries have {q.shape[1]} features, the manifold {f.shape[1]}")
    if radii.shape != (f.shape[0],):
        raise ValueError(f"radii must be [{f.shape[0]}], got {list(radii.shape)}")
    out = []
    for start in range(0, q.shape[0], batch_size):
        d = torch.cdist(q[start:start + batch_size].double(), f.double())  # [b, N]
        out.append((d <= radii.double()[None]).any(dim=1))
    return torch.cat(out)


@dataclass(frozen=True)
class PRResult:
    precision: float
    recall: float
    k: int
    num_real: int
    num_fake: int
    feature_net: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def precision_recall(real: np.ndarray | torch.Tensor, fake: np.ndarray | torch.Tensor, *, k: int = 3,
                     batch_size: int = 2048) -> PRResult:
    """Precision (fake inside the real manifold) and recall (real inside the fake manifold) of feature sets."""
    r, f = _as_tensor(real), _as_tensor(fake)
    precision = inside_manifold(f, r, manifold_radii(r, k, batch_size=batch_size), batch_size=batch_size)
    recall = inside_manifold(r, f, manifold_radii(f, k, batch_size=batch_size), batch_size=batch_size)
    return PRResult(float(precision.float().mean()), float(recall.float().mean()), k, r.shape[0], f.shape[0])


def pr_from_stats(real: FeatureStats, fake: FeatureStats, *, k: int = 3) -> PRResult:
    """Precision / recall from two :class:`FeatureStats` that captured their features (``capture_features``)."""
    for name, s in (("real", real), ("generated", fake)):
        if s.features is None:
            raise ValueError(f"precision/recall needs the {name} images' features: compute the statistics with "
                             f"capture_features=True")
    if real.feature_net_sha256 != fake.feature_net_sha256:
        raise ValueError("real and generated features come from different feature networks")
    res = precision_recall(real.features, fake.features, k=k)  # type: ignore[arg-type]
    return PRResult(res.precision, res.recall, k, res.num_real, res.num_fake, real.feature_net)
