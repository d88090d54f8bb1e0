"""Inversion: the paper's projector (w, w+, W, W+), batched; PULSE upsampling; latent files; run folders.

Importing this package loads no weights (LPIPS is built on first use).
"""

from opstylegan.inversion.latents_io import LatentFile, LatentFileError, load_latent, save_latent
from opstylegan.inversion.projector import (
    FIG11_OPTIONS,
    InversionOptions,
    InversionProgress,
    InversionResult,
    initial_latents,
    invert,
    lpips_quartiles,
)
from opstylegan.inversion.pulse import PulseResult, downsample_nearest, pulse

__all__ = [
    "FIG11_OPTIONS",
    "InversionOptions",
    "InversionProgress",
    "InversionResult",
    "LatentFile",
    "LatentFileError",
    "PulseResult",
    "downsample_nearest",
    "initial_latents",
    "invert",
    "load_latent",
    "lpips_quartiles",
    "pulse",
    "save_latent",
]
