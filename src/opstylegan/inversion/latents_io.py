"""Latent files: one inverted latent per safetensors file, tagged with its space and its model's fingerprint.

A latent only means something for the exact generator it was optimised for, so every file records
``Generator.fingerprint()`` (sha256 of config + weights) and :func:`load_latent` refuses a file from another
model. The file holds one tensor, ``latent``, of the per-image shape of its space (no batch axis):

| space | tensor shape |
| ----- | ------------ |
| ``w`` | [C] |
| ``w+`` | [L, C] |
| ``W`` | [R, C] |
| ``W+`` | [L, R, C] |

and string metadata: ``format``, ``format_version``, ``space``, ``fingerprint`` and whatever the writer adds
(``source`` image, ``steps``, final ``lpips``, ...).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from opstylegan.io.atomic import write_bytes
from opstylegan.io.checkpoint import safetensors_metadata
from opstylegan.latent import SPACES

if TYPE_CHECKING:
    from opstylegan.models.generator import Generator

__all__ = ["LATENT_FORMAT", "LatentFile", "LatentFileError", "load_latent", "save_latent"]

LATENT_FORMAT = "opstylegan-latent"
LATENT_FORMAT_VERSION = "1"
_RESERVED = ("format", "format_version", "space", "fingerprint")


class LatentFileError(ValueError):
    """A latent file is unreadable, malformed, or belongs to another model."""


@dataclass(frozen=True)
class LatentFile:
    """A loaded latent: ``latent`` has the per-image shape of ``space`` (add ``[None]`` for a batch of one)."""

    latent: torch.Tensor
    space: str
    fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)


def save_latent(path: str | os.PathLike[str], latent: torch.Tensor, *, space: str, fingerprint: str,
                metadata: dict[str, object] | None = None) -> Path:
    """Write one latent (per-image shape, float32) atomically to ``path`` (a ``.safetensors`` file).

    Args:
        path: Destination file.
        latent: The latent of ONE image, e.g. [R, C] for ``W`` (no batch axis).
        space: Its space, one of ``w``, ``w+``, ``W``, ``W+``.
        fingerprint: ``G.fingerprint()`` of the model it belongs to.
        metadata: Extra key -> value pairs (stored as strings; keys of the reserved names are refused).
    """
    if space not in SPACES:
        raise LatentFileError(f"unknown latent space {space!r}; expected one of {list(SPACES)}")
    if not isinstance(latent, torch.Tensor) or not latent.is_floating_point():
        raise LatentFileError(f"latent must be a float tensor, got {type(latent).__name__}")
    extra = {str(k): str(v) for k, v in (metadata or {}).items()}
    clash = sorted(set(extra) & set(_RESERVED))
    if clash:
        raise LatentFileError(f"metadata keys {clash} are reserved; use other names")
    meta = {"format": LATENT_FORMAT, "format_version": LATENT_FORMAT_VERSION, "space": space,
            "fingerprint": str(fingerprint), **extra}
    blob = st_save({"latent": latent.detach().to("cpu", torch.float32).contiguous()}, metadata=meta)
    write_bytes(path, blob)
    return Path(path)


def load_latent(path: str | os.PathLike[str], G: Generator | None = None, *,
                device: torch.device | str = "cpu") -> LatentFile:
    """Read a latent file; with ``G``, refuse it unless it was made for exactly this model.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        LatentFileError: not an opstylegan latent file, its values are not all finite, or (with ``G``) its
            fingerprint or shape does not match the model.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"latent file not found: {str(p)!r}")
    blob = p.read_bytes()
    try:
        tensors = st_load(blob)
        meta = safetensors_metadata(blob)
    except (SafetensorError, ValueError, UnicodeDecodeError) as e:
        raise LatentFileError(f"{str(p)!r} is not a readable safetensors latent file: {e}") from None
    if meta.get("format") != LATENT_FORMAT or "latent" not in tensors:
        raise LatentFileError(f"{str(p)!r} is not an opstylegan latent file (format {LATENT_FORMAT!r} missing)")
    space, fp = meta.get("space", ""), meta.get("fingerprint", "")
    if space not in SPACES:
        raise LatentFileError(f"{str(p)!r} records an unknown latent space {space!r}")
    latent = tensors["latent"]
    if not latent.is_floating_point() or not bool(torch.isfinite(latent).all()):
        bad = int((~torch.isfinite(latent)).sum()) if latent.is_floating_point() else latent.numel()
        raise LatentFileError(f"{str(p)!r} holds an unusable latent: {bad} of its {latent.numel()} values are NaN, "
                              "infinite or not floats (an optimisation that diverged?); invert that image again")
    if G is not None:
        own = G.fingerprint()
        if fp != own:
            raise LatentFileError(
                f"{str(p)!r} was inverted with another model (fingerprint {fp[:12]}...), not this one "
                f"({own[:12]}...); a latent only makes sense for the exact generator it was optimised for")
        expect = G.latent_shape(space)  # also refuses W / W+ on a baseline model
        if tuple(latent.shape) != expect:
            raise LatentFileError(f"{str(p)!r} holds a {space!r} latent of shape {list(latent.shape)}; this model "
                                  f"expects {list(expect)}")
    extra = {k: v for k, v in meta.items() if k not in _RESERVED}
    return LatentFile(latent.to(device), space, fp, extra)
