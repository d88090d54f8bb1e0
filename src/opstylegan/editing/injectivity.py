"""Non-injectivity (paper sec. 6.2, fig. 11): two latents for one target, and what lies between them.

Each target is inverted twice, from two random inits and without the pull toward ``w_avg``
(:data:`opstylegan.inversion.projector.FIG11_OPTIONS`). Both solutions reconstruct the target, yet the straight
path between them need not: the more latent codes produce the same image, the more the images along the path
may wander. We report, per target, the LPIPS of every path point's image to the target and between consecutive
images; an injective-looking model keeps both flat and small.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from opstylegan.editing.interpolate import interpolation_ts, lerp_path, render_latents
from opstylegan.latent import check_space

if TYPE_CHECKING:
    from opstylegan.inversion.projector import InversionProgress, InversionResult
    from opstylegan.models.generator import Generator

__all__ = ["InjectivityResult", "non_injectivity"]


@dataclass
class InjectivityResult:
    """Output of :func:`non_injectivity` (CPU tensors; N targets, K path points).

    Attributes:
        latents_a, latents_b: The two solutions per target, ``[N, *latent_shape]``.
        images: Path images ``[N, K, C, H, W]`` (point 0 is solution a, point K-1 solution b).
        ts: Interpolation weights ``[K]``.
        lpips_to_target: LPIPS of each path image to its target, ``[N, K]``.
        lpips_consecutive: LPIPS between consecutive path images, ``[N, K-1]``.
        lpips_a_b: LPIPS between the two solutions' images, ``[N]``.
        latent_distance: ``|a - b| / (|a - w_avg| + |b - w_avg|) * 2``: how far apart the solutions are, relative
            to their distance from the mean, ``[N]``.
        space, fingerprint, steps, seeds: What was run (seeds ``[N, 2]``).
    """

    latents_a: torch.Tensor
    latents_b: torch.Tensor
    images: torch.Tensor = field(repr=False)
    ts: torch.Tensor
    lpips_to_target: torch.Tensor
    lpips_consecutive: torch.Tensor
    lpips_a_b: torch.Tensor
    latent_distance: torch.Tensor
    space: str
    fingerprint: str
    steps: int
    seeds: torch.Tensor

    def summary(self) -> dict[str, Any]:
        """JSON-ready figures, averaged over targets, plus the per-target curves."""
        to_t = self.lpips_to_target.double()
        ends = to_t[:, [0, -1]].mean(dim=1)  # [N]: reconstruction quality of the two solutions
        interior = to_t[:, 1:-1] if to_t.shape[1] > 2 else to_t
        return {
            "space": self.space, "fingerprint": self.fingerprint, "steps": self.steps, "num_targets": len(to_t),
            "num_points": len(self.ts), "ts": self.ts.tolist(),
            "endpoint_lpips": float(ends.mean()),
            "path_lpips_mean": float(to_t.mean()),
            "path_lpips_max": float(to_t.max(dim=1).values.mean()),
            "path_lpips_excess": float((interior.max(dim=1).values - ends).mean()),
            "path_lpips_variance": float(to_t.var(dim=1, unbiased=False).mean()),
            "path_length": float(self.lpips_consecutive.double().sum(dim=1).mean()),
            "lpips_a_b": float(self.lpips_a_b.double().mean()),
            "latent_distance": float(self.latent_distance.double().mean()),
            "per_target": [{"seeds": s.tolist(), "lpips_to_target": t.tolist(), "lpips_consecutive": c.tolist(),
                            "lpips_a_b": float(ab)}
                           for s, t, c, ab in zip(self.seeds, self.lpips_to_target, self.lpips_consecutive,
                                                  self.lpips_a_b, strict=True)],
        }


def non_injectivity(
    G: Generator,
    targets: torch.Tensor,
    space: str | None = None,
    *,
    steps: int = 1000,
    num_points: int = 9,
    seed: int = 0,
    lpips: nn.Module | None = None,
    batch_size: int | None = None,
    invert_fn: Callable[..., InversionResult] | None = None,
    progress: Callable[[InversionProgress], None] | None = None,
) -> InjectivityResult:
    """Invert each target twice (random init, no regularizer) and measure the path between the two solutions.

    Args:
        G: The generator.
        targets: Images ``[N, C, H, W]`` in [-1, 1] at G's resolution and channels.
        space: Latent space (default: G's native space, ``W`` or ``w``).
        steps: Projector steps for each inversion.
        num_points: Points on each path, endpoints included (>= 2).
        seed: Target i's two inits come from seeds ``seed + 2i`` and ``seed + 2i + 1``.
        lpips: LPIPS module shared by the projector and the measurements; default ``LPIPS("vgg", resize_to=256)``.
        batch_size: Targets optimised at once by the projector (all 2N by default).
        invert_fn: The projector, :func:`opstylegan.inversion.invert` by default (a hook for tests).
        progress: Passed to the projector.
    """
    from opstylegan.inversion.projector import FIG11_OPTIONS, invert

    space = check_space(space or G.native_space, overparam=G.overparam)
    ts = interpolation_ts(num_points)
    if not isinstance(targets, torch.Tensor) or targets.ndim != 4:
        raise ValueError(f"targets must be a float tensor [N, C, H, W], got "
                         f"{list(targets.shape) if isinstance(targets, torch.Tensor) else type(targets).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    device = G.w_avg.device
    if lpips is None:
        from opstylegan.metrics.lpips import LPIPS

        lpips = LPIPS("vgg", resize_to=256)
    lpips = lpips.to(device)
    n = targets.shape[0]
    seeds = torch.tensor([[seed + 2 * i, seed + 2 * i + 1] for i in range(n)])  # [N, 2]
    both = torch.cat([targets, targets])  # [2N, C, H, W]: first copy -> solution a, second -> solution b
    result = (invert_fn or invert)(G, both, space, steps=steps, seed=seeds.T.flatten().tolist(), lpips=lpips,
                                   batch_size=batch_size, progress=progress, **FIG11_OPTIONS)
    a, b = result.latents[:n], result.latents[n:]
    path = lerp_path(a, b, ts)  # [N, K, *shape]
    k = len(ts)
    images = render_latents(G, path.flatten(0, 1), space).unflatten(0, (n, k))  # [N*K, ...] -> [N, K, C, H, W]
    with torch.no_grad():
        flat = images.flatten(0, 1).to(device)
        feats = lpips.features(flat)
        tgt = lpips.features(targets.to(device).float().repeat_interleave(k, dim=0))  # [N*K, ...] to match flat
        to_target = lpips.distance_from_features(feats, tgt).view(n, k).cpu()  # [N*K] -> [N, K]
        f0 = [f.unflatten(0, (n, k))[:, :-1].flatten(0, 1) for f in feats]  # [N*(K-1), ...]
        f1 = [f.unflatten(0, (n, k))[:, 1:].flatten(0, 1) for f in feats]
        consecutive = lpips.distance_from_features(f0, f1).view(n, k - 1).cpu()
        fa = [f.unflatten(0, (n, k))[:, 0] for f in feats]
        fb = [f.unflatten(0, (n, k))[:, -1] for f in feats]
        a_b = lpips.distance_from_features(fa, fb).cpu()
    w_avg = G.w_avg.detach().cpu().float()
    dims = tuple(range(1, a.ndim))
    spread = (a - w_avg).square().sum(dims).sqrt() + (b - w_avg).square().sum(dims).sqrt()
    latent_distance = 2 * (a - b).square().sum(dims).sqrt() / spread.clamp_min(1e-12)
    return InjectivityResult(latents_a=a, latents_b=b, images=images, ts=ts, lpips_to_target=to_target,
                             lpips_consecutive=consecutive, lpips_a_b=a_b, latent_distance=latent_distance,
                             space=space, fingerprint=result.fingerprint, steps=steps, seeds=seeds)
