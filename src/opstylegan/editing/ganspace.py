"""GANSpace (Härkönen et al. 2020; paper sec. 5.2): principal directions of the intermediate latent space, and
edits along them.

Which vectors are analysed. The baseline maps one z to one w, so N samples are N mapped vectors. In the
overparameterized model every row of a latent matrix is ``W_i = M(Z_i)`` with ``Z_i`` a unit Gaussian: each row
is a sample of the same distribution as the baseline's w (rows of one matrix are correlated, 0.5 in Z, but
identically distributed). :func:`fit_ganspace` therefore uses ``rows_per_matrix`` rows (default: all R) of
``ceil(N / rows_per_matrix)`` sampled matrices, N vectors in all; matrix m comes from seed ``seed + m``.
Correlated rows leave the covariance estimate unbiased; they only make it noisier per vector than N
independent draws (pass ``rows_per_matrix=1`` for independent vectors at R times the mapping cost).

The PCA is computed in float64 from streamed first and second moments (no sample matrix is kept):
``cov = (sum x x^T - N mu mu^T) / (N - 1)``, eigendecomposed with ``torch.linalg.eigh``; components are sorted
by decreasing variance and their sign is fixed (largest-magnitude entry positive) so that fits are reproducible.

Edits add ``sigma * std_k * c_k`` to every vector / row of a latent (std_k = sqrt of the k-th eigenvalue); with
a layer range, a ``w`` / ``W`` latent is first broadcast to ``w+`` / ``W+`` and only those layers move.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from opstylegan.io.atomic import write_bytes, write_text
from opstylegan.io.checkpoint import safetensors_metadata
from opstylegan.latent import broadcast, check_space

if TYPE_CHECKING:
    from opstylegan.models.generator import Generator

__all__ = [
    "GANSPACE_FORMAT",
    "CovarianceAccumulator",
    "GANSpace",
    "GANSpaceError",
    "apply_direction",
    "edit_latents",
    "fit_ganspace",
    "load_ganspace",
    "parse_layers",
    "pca_from_covariance",
]

GANSPACE_FORMAT = "opstylegan-ganspace"


class GANSpaceError(ValueError):
    """A components file is unreadable, malformed, or belongs to another model."""


class CovarianceAccumulator:
    """Running float64 mean and covariance of a stream of vectors ``[B, C]``."""

    def __init__(self, dim: int) -> None:
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = dim
        self.count = 0
        self._sum = torch.zeros(dim, dtype=torch.float64)
        self._outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected vectors [B, {self.dim}], got {list(x.shape)}")
        x = x.detach().to("cpu", torch.float64)
        self.count += x.shape[0]
        self._sum += x.sum(0)
        self._outer += x.T @ x

    @property
    def mean(self) -> torch.Tensor:
        if self.count < 1:
            raise ValueError("no vectors accumulated")
        return self._sum / self.count

    @property
    def cov(self) -> torch.Tensor:
        """Unbiased covariance ``[C, C]`` (float64)."""
        if self.count < 2:
            raise ValueError(f"need at least 2 vectors for a covariance, got {self.count}")
        mu = self.mean
        cov = (self._outer - self.count * torch.outer(mu, mu)) / (self.count - 1)
        return (cov + cov.T) / 2  # exactly symmetric for eigh


def pca_from_covariance(cov: torch.Tensor, num_components: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top principal directions of a covariance ``[C, C]`` (float64).

    Returns:
        ``(components [K, C], variances [K], explained_variance_ratio [K])``, by decreasing variance; each
        component has unit norm and its largest-magnitude entry positive.
    """
    c = cov.shape[0]
    if cov.ndim != 2 or cov.shape[1] != c:
        raise ValueError(f"cov must be a square matrix, got {list(cov.shape)}")
    if isinstance(num_components, bool) or not isinstance(num_components, int) or not 1 <= num_components <= c:
        raise ValueError(f"num_components must be an int in [1, {c}], got {num_components!r}")
    evals, evecs = torch.linalg.eigh(cov.double())  # ascending
    order = torch.argsort(evals, descending=True)[:num_components]
    variances = evals[order].clamp_min(0)
    comps = evecs[:, order].T.contiguous()  # [C, K] -> [K, C]
    idx = comps.abs().argmax(dim=1)
    sign = torch.sign(comps.gather(1, idx[:, None]))  # [K, 1]
    comps = comps * torch.where(sign == 0, torch.ones_like(sign), sign)
    total = evals.clamp_min(0).sum()
    ratio = variances / total if total > 0 else torch.zeros_like(variances)
    return comps, variances, ratio


@dataclass(frozen=True)
class GANSpace:
    """Principal directions of a model's w / W rows.

    Attributes:
        components: ``[K, C]`` unit directions, by decreasing variance (float32).
        mean: ``[C]`` mean of the analysed vectors.
        std: ``[K]`` standard deviation along each component (sqrt of the eigenvalue).
        explained_variance_ratio: ``[K]`` share of the total variance.
        fingerprint: ``G.fingerprint()`` of the model.
        num_samples: Vectors analysed; rows_per_matrix: rows taken from each W matrix (None for baselines).
        seed, truncation_psi: How the samples were drawn.
    """

    components: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    explained_variance_ratio: torch.Tensor
    fingerprint: str
    num_samples: int
    rows_per_matrix: int | None
    seed: int
    truncation_psi: float

    @property
    def num_components(self) -> int:
        return self.components.shape[0]

    def direction(self, k: int, sigma: float = 1.0) -> torch.Tensor:
        """``sigma * std_k * c_k``, ``[C]``."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < self.num_components:
            raise ValueError(f"component must be an int in [0, {self.num_components - 1}], got {k!r}")
        return sigma * self.std[k] * self.components[k]

    def info(self) -> dict[str, Any]:
        """JSON-ready description (everything but the vectors)."""
        return {"format": GANSPACE_FORMAT, "fingerprint": self.fingerprint, "num_components": self.num_components,
                "w_dim": self.components.shape[1], "num_samples": self.num_samples,
                "rows_per_matrix": self.rows_per_matrix, "seed": self.seed, "truncation_psi": self.truncation_psi,
                "std": self.std.tolist(), "explained_variance_ratio": self.explained_variance_ratio.tolist()}

    def save(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        """Write ``path`` (.safetensors: components, mean, std, explained_variance_ratio; metadata) and a JSON
        twin beside it (same name, .json). Both atomically. Returns the two paths."""
        path = Path(path)
        tensors = {"components": self.components, "mean": self.mean, "std": self.std,
                   "explained_variance_ratio": self.explained_variance_ratio}
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
        info = self.info()
        meta = {k: json.dumps(v) if not isinstance(v, str) else v for k, v in info.items()
                if k not in ("std", "explained_variance_ratio")}
        write_bytes(path, st_save(tensors, metadata=meta))
        json_path = path.with_suffix(".json")
        write_text(json_path, json.dumps(info, indent=2) + "\n")
        return path, json_path


def load_ganspace(path: str | os.PathLike[str], G: Generator | None = None) -> GANSpace:
    """Read a components file written by :meth:`GANSpace.save`; with ``G``, refuse one fitted on another model.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        GANSpaceError: Not a GANSpace file, or made for another model.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"components file not found: {str(p)!r}")
    blob = p.read_bytes()
    try:
        tensors = st_load(blob)
        meta = safetensors_metadata(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise GANSpaceError(f"{str(p)!r} is not a readable safetensors file: {e}") from None
    need = {"components", "mean", "std", "explained_variance_ratio"}
    if meta.get("format") != GANSPACE_FORMAT or not need <= set(tensors):
        raise GANSpaceError(f"{str(p)!r} is not an opstylegan GANSpace file (run `opstylegan edit fit` to make one)")
    fp = meta.get("fingerprint", "")
    if G is not None and fp != G.fingerprint():
        raise GANSpaceError(f"{str(p)!r} was fitted on another model (fingerprint {fp[:12]}...), not this one "
                            f"({G.fingerprint()[:12]}...); fit the components on this model")
    rows = json.loads(meta.get("rows_per_matrix", "null"))
    return GANSpace(components=tensors["components"], mean=tensors["mean"], std=tensors["std"],
                    explained_variance_ratio=tensors["explained_variance_ratio"], fingerprint=fp,
                    num_samples=int(json.loads(meta.get("num_samples", "0"))), rows_per_matrix=rows,
                    seed=int(json.loads(meta.get("seed", "0"))),
                    truncation_psi=float(json.loads(meta.get("truncation_psi", "1.0"))))


def fit_ganspace(G: Generator, num_samples: int, num_components: int, *, seed: int = 0,
                 rows_per_matrix: int | None = None, truncation_psi: float = 1.0, batch_size: int = 64,
                 fingerprint: str | None = None, progress: Callable[[int, int], None] | None = None) -> GANSpace:
    """PCA of ``num_samples`` mapped latent vectors of ``G`` (see the module docstring for which vectors).

    Args:
        G: The generator.
        num_samples: N, vectors analysed (>= num_components + 1).
        num_components: K, directions kept.
        seed: Sample m (a z, or a Z matrix) comes from seed ``seed + m``: batch-size independent.
        rows_per_matrix: Overparam models: rows used from each W matrix (1..R; default R). Ignored for baselines.
        truncation_psi: Truncation of the samples (1 = none, as GANSpace).
        batch_size: z's / Z matrices mapped at once.
        fingerprint: ``G.fingerprint()`` if already computed.
        progress: Called as ``progress(vectors_done, num_samples)``.
    """
    w_dim = G.w_avg.shape[0]
    if isinstance(num_components, bool) or not isinstance(num_components, int) or not 1 <= num_components <= w_dim:
        raise ValueError(f"num_components must be an int in [1, {w_dim}] (w_dim), got {num_components!r}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples <= num_components:
        raise ValueError(f"num_samples must be an int > num_components ({num_components}), got {num_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    per = 1
    if G.overparam:
        per = G.rows if rows_per_matrix is None else rows_per_matrix
        if isinstance(per, bool) or not isinstance(per, int) or not 1 <= per <= G.rows:
            raise ValueError(f"rows_per_matrix must be an int in [1, {G.rows}] (R), got {rows_per_matrix!r}")
    acc = CovarianceAccumulator(w_dim)
    num_draws = math.ceil(num_samples / per)
    with torch.no_grad():
        for start in range(0, num_draws, batch_size):
            seeds = list(range(seed + start, seed + min(num_draws, start + batch_size)))
            w = G.mapping(G.z_from_seeds(seeds), truncation_psi=truncation_psi)  # [b, C] or [b, R, C]
            if G.overparam:
                w = w[:, :per].reshape(-1, w_dim)  # [b, per, C] -> [b*per, C]
            w = w[: num_samples - acc.count]
            acc.update(w)
            if progress is not None:
                progress(acc.count, num_samples)
    comps, variances, ratio = pca_from_covariance(acc.cov, num_components)
    return GANSpace(components=comps.float(), mean=acc.mean.float(), std=variances.sqrt().float(),
                    explained_variance_ratio=ratio.float(), fingerprint=fingerprint or G.fingerprint(),
                    num_samples=acc.count, rows_per_matrix=per if G.overparam else None, seed=seed,
                    truncation_psi=float(truncation_psi))


# ----------------------------------------------------------------------------------------------------------
# Edits.

def parse_layers(spec: str, num_ws: int) -> range:
    """'a-b' (inclusive) or 'a' -> range of style layers, checked against ``num_ws``."""
    parts = spec.strip().split("-")
    try:
        lo, hi = (int(parts[0]), int(parts[-1])) if len(parts) in (1, 2) else (None, None)
    except ValueError:
        lo = hi = None
    if lo is None or hi is None:
        raise ValueError(f"bad layer range {spec!r}; expected 'a-b' or 'a' with integers in [0, {num_ws - 1}]")
    if not 0 <= lo <= hi < num_ws:
        raise ValueError(f"layer range {spec!r} is outside [0, {num_ws - 1}] (this model has {num_ws} style "
                         f"layers) or its end is before its start")
    return range(lo, hi + 1)


def apply_direction(latent: torch.Tensor, space: str, direction: torch.Tensor, *, num_ws: int, rows: int,
                    layers: Sequence[int] | None = None) -> tuple[torch.Tensor, str]:
    """Add ``direction`` ``[C]`` to every vector / row of ``latent`` ``[B, *shape]``.

    With ``layers``, ``w`` / ``W`` are first broadcast to ``w+`` / ``W+`` (same images) and only the listed
    style layers move. Returns ``(edited latent, its space)``; the input is not modified.
    """
    if direction.ndim != 1 or direction.shape[0] != latent.shape[-1]:
        raise ValueError(f"direction must have shape [{latent.shape[-1]}], got {list(direction.shape)}")
    direction = direction.to(latent.device, latent.dtype)
    if layers is None:
        return latent + direction, space  # broadcasts over batch, layers and rows
    layers = list(layers)
    if not layers or min(layers) < 0 or max(layers) >= num_ws:
        raise ValueError(f"layers must be indices in [0, {num_ws - 1}], got {layers}")
    to_space = {"w": "w+", "w+": "w+", "W": "W+", "W+": "W+"}[space]
    out = broadcast(latent, space, to_space, num_ws=num_ws, rows=rows).clone()  # [B, L, C] or [B, L, R, C]
    out[:, layers] += direction
    return out, to_space


def edit_latents(G: Generator, latent: torch.Tensor, space: str, ganspace: GANSpace, component: int,
                 sigmas: Sequence[float], *, layers: Sequence[int] | None = None) -> tuple[torch.Tensor, str]:
    """One latent ``[*shape]`` (or ``[1, *shape]``) edited along component k at each sigma.

    Returns ``(latents [S, *shape'], space')``: row s is ``latent + sigmas[s] * std_k * c_k`` on every vector /
    row (or on ``layers`` only, in ``w+`` / ``W+``).
    """
    space = check_space(space, overparam=G.overparam)
    shape = G.latent_shape(space)
    if tuple(latent.shape) == shape:
        latent = latent.unsqueeze(0)  # [*shape] -> [1, *shape]
    if tuple(latent.shape) != (1, *shape):
        raise ValueError(f"expected one {space!r} latent of shape {list(shape)}, got {list(latent.shape)}")
    if ganspace.components.shape[1] != shape[-1]:
        raise GANSpaceError(f"components have {ganspace.components.shape[1]} dims, the latent {shape[-1]}")
    outs = []
    out_space = space
    for sigma in sigmas:
        edited, out_space = apply_direction(latent, space, ganspace.direction(component, float(sigma)),
                                            num_ws=G.num_ws, rows=G.rows, layers=layers)
        outs.append(edited)
    return torch.cat(outs), out_space
