"""Using an encoder: ``encode(E, images)``, loading with the fingerprint check, and the encoder a model ships.

An encoder belongs to exactly one generator: its config records ``Generator.fingerprint()`` (sha256 of the
generator's config and weights), and :func:`check_encoder` / :func:`load_encoder` refuse it for any other
model, as latent files are refused.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from opstylegan.encoder.model import Encoder
from opstylegan.latent import LatentError, broadcast
from opstylegan.models.generator import Generator

__all__ = ["ENCODER_DIR", "EncoderMismatchError", "check_encoder", "check_encoder_for_spaces", "encode", "encode_as",
           "load_encoder", "model_encoder_path"]

#: Where a model folder keeps its encoder: ``<model>/encoder/`` (config.json + model.safetensors).
ENCODER_DIR = "encoder"


class EncoderMismatchError(ValueError):
    """An encoder was made for another generator (fingerprint or shapes differ)."""


def check_encoder(E: Encoder, G: Generator, *, fingerprint: str | None = None) -> None:
    """Raise :class:`EncoderMismatchError` unless ``E`` was made for exactly ``G``.

    ``fingerprint``: ``G.fingerprint()`` if already computed (hashing the weights takes a moment).
    """
    own = fingerprint or G.fingerprint()
    theirs = E.cfg.generator_fingerprint
    where = f" ({E.source})" if getattr(E, "source", None) else ""
    if theirs != own:
        raise EncoderMismatchError(
            f"the encoder{where} was trained for another model (fingerprint {theirs[:12] or 'none'}...), not this "
            f"one ({own[:12]}...); an encoder only fits the exact generator it was trained with: train one for "
            f"this model with `opstylegan encoder train --model ...`")
    expect = G.latent_shape(E.space)
    if (G.img_channels, G.img_resolution) != (E.cfg.img_channels, E.cfg.img_resolution) or \
            tuple(E.cfg.latent_shape) != expect:
        raise EncoderMismatchError(f"the encoder{where} predicts {E.space!r} latents {list(E.cfg.latent_shape)} from "
                                   f"{E.cfg.img_channels}x{E.cfg.img_resolution}px images; this model needs "
                                   f"{list(expect)} from {G.img_channels}x{G.img_resolution}px")


def load_encoder(path: str | os.PathLike[str], G: Generator | None = None, *,
                 device: torch.device | str = "cpu") -> Encoder:
    """``Encoder.from_pretrained(path)``; with ``G``, refused (EncoderMismatchError) unless made for G."""
    E = Encoder.from_pretrained(path, device=device)
    if G is not None:
        check_encoder(E, G)
    return E


def check_encoder_for_spaces(path: str | os.PathLike[str], G: Generator, spaces: list[str]) -> Encoder:
    """Load the encoder at ``path`` and check, before any work, that it fits ``G`` and can start an inversion
    in every one of ``spaces``; returns it. Raises EncoderMismatchError, LatentError or a loading error."""
    E = load_encoder(path, G)
    for space in spaces:
        if space != E.space and (E.space, space) not in _BROADCASTS:
            raise LatentError(f"the encoder {str(path)!r} predicts {E.space!r} latents, which cannot start an "
                              f"inversion in {space!r}; use --space {E.space}"
                              + (" or W+" if G.overparam else "") + ", or an encoder trained for that space")
    return E


_BROADCASTS = {("W", "W+"), ("w+", "W+")}


def model_encoder_path(model_dir: str | os.PathLike[str]) -> Path:
    """The encoder shipped in a model folder, ``<model_dir>/encoder``; FileNotFoundError if it has none."""
    path = Path(model_dir) / ENCODER_DIR
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"the model {str(model_dir)!r} ships no encoder ({path} is missing); give one with --encoder PATH, or "
            f"train one with `opstylegan encoder train --model {model_dir} --data DATASET --outdir RUNS`")
    return path


@torch.no_grad()
def encode(E: Encoder, images: torch.Tensor, *, batch_size: int | None = None) -> torch.Tensor:
    """Images ``[N, C, H, W]`` in [-1, 1] -> latents ``[N, *E.cfg.latent_shape]`` in ``E.space``, float32, on
    the images' device (the work runs on E's device). ``batch_size`` only chunks the work."""
    from opstylegan.inversion.projector import check_targets

    images = check_targets(images, channels=E.cfg.img_channels, size=(E.cfg.img_resolution,) * 2, name="images")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be None (all at once) or an int >= 1, got {batch_size!r}")
    device = E.w_avg.device
    bs = batch_size or len(images)
    was_training = E.training
    E.eval()
    try:
        out = [E(images[i:i + bs].to(device)).float().to(images.device) for i in range(0, len(images), bs)]
    finally:
        E.train(was_training)
    return torch.cat(out)


def encode_as(E: Encoder, G: Generator, images: torch.Tensor, space: str, *, fingerprint: str | None = None,
              batch_size: int | None = None) -> torch.Tensor:
    """Encode and express the latents in ``space`` of ``G`` (W -> W+, w+ -> W+ broadcast; same images).

    Refuses an encoder of another model, and a space the encoder's latents cannot be written in without
    changing the image (e.g. ``w+`` from a ``W`` encoder).
    """
    check_encoder(E, G, fingerprint=fingerprint)
    latents = encode(E, images, batch_size=batch_size)
    try:
        return broadcast(latents, E.space, space, num_ws=G.num_ws, rows=G.rows)
    except LatentError:
        raise LatentError(f"the encoder predicts {E.space!r} latents, which cannot start an inversion in {space!r}; "
                          f"use space {E.space!r}" + (" or 'W+'" if G.overparam else "")
                          + " or an encoder trained for that space") from None
