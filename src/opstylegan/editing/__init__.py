"""Editing: interpolation between latents, editability metrics, GANSpace directions, non-injectivity.

Importing this package loads no network weights; LPIPS / Inception are built on first use.
"""

from opstylegan.editing.editability import (
    EditabilityProgress,
    EditabilityResult,
    editability_metrics,
    reference_batches,
    reference_stats,
)
from opstylegan.editing.ganspace import (
    CovarianceAccumulator,
    GANSpace,
    GANSpaceError,
    apply_direction,
    edit_latents,
    fit_ganspace,
    load_ganspace,
    parse_layers,
    pca_from_covariance,
)
from opstylegan.editing.injectivity import InjectivityResult, non_injectivity
from opstylegan.editing.interpolate import (
    LatentMismatchError,
    LatentSet,
    MissingVideoBackendError,
    check_compatible,
    interpolation_ts,
    iter_pairs,
    lerp_path,
    load_latent_set,
    mp4_available,
    num_pairs,
    render_latents,
    save_gif,
    save_mp4,
)

__all__ = [
    "CovarianceAccumulator",
    "EditabilityProgress",
    "EditabilityResult",
    "GANSpace",
    "GANSpaceError",
    "InjectivityResult",
    "LatentMismatchError",
    "LatentSet",
    "MissingVideoBackendError",
    "apply_direction",
    "check_compatible",
    "edit_latents",
    "editability_metrics",
    "fit_ganspace",
    "interpolation_ts",
    "iter_pairs",
    "lerp_path",
    "load_ganspace",
    "load_latent_set",
    "mp4_available",
    "non_injectivity",
    "num_pairs",
    "parse_layers",
    "pca_from_covariance",
    "reference_batches",
    "reference_stats",
    "render_latents",
    "save_gif",
    "save_mp4",
]
