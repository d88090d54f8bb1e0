"""Reference outputs of a shipped encoder: its latents for fixed generated images, to catch silent changes.

A shipped encoder's folder holds ``reference.json``: the encoder's and the generator's fingerprints and the
latents the encoder predicted, when shipped, for the images G makes from seeds 0-3 at truncation 0.7 (the
inputs are regenerated from the shipped generator, which has its own reference images). A later change of the
encoder's maths, of its weights or of the generator shows up as a mismatch.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from opstylegan.encoder.api import check_encoder, encode
from opstylegan.encoder.model import Encoder
from opstylegan.io.atomic import write_text
from opstylegan.models.generator import Generator

__all__ = ["REFERENCE_NAME", "ReferenceMismatch", "check_reference", "reference_outputs", "write_reference"]

REFERENCE_NAME = "reference.json"
REFERENCE_SEEDS = (0, 1, 2, 3)
REFERENCE_PSI = 0.7


class ReferenceMismatch(AssertionError):
    """A shipped encoder no longer reproduces its reference latents."""


def reference_inputs(G: Generator) -> torch.Tensor:
    """G's images of seeds 0-3 at truncation 0.7, clamped to [-1, 1]: ``[4, C, H, W]``."""
    with torch.no_grad():
        return G(G.z_from_seeds(list(REFERENCE_SEEDS)), truncation_psi=REFERENCE_PSI).clamp(-1, 1)


def reference_outputs(E: Encoder, G: Generator) -> dict[str, Any]:
    """The JSON record of E's latents for :func:`reference_inputs` (6 decimals)."""
    check_encoder(E, G)
    latents = encode(E, reference_inputs(G))
    return {"seeds": list(REFERENCE_SEEDS), "truncation_psi": REFERENCE_PSI, "space": E.space,
            "generator_fingerprint": E.cfg.generator_fingerprint, "encoder_fingerprint": E.fingerprint(),
            "shape": list(latents.shape), "latents": [round(v, 6) for v in latents.flatten().tolist()]}


def write_reference(folder: str | os.PathLike[str], E: Encoder, G: Generator) -> Path:
    """Writes ``folder/reference.json`` for E (the folder holding the saved encoder)."""
    path = Path(folder) / REFERENCE_NAME
    write_text(path, json.dumps(reference_outputs(E, G)) + "\n")
    return path


def check_reference(folder: str | os.PathLike[str], G: Generator, *, atol: float = 1e-4) -> float:
    """Loads the encoder in ``folder`` for G and compares its latents with ``reference.json``; returns the largest
    absolute difference, or raises :class:`ReferenceMismatch` naming what changed."""
    folder = Path(folder)
    ref = json.loads((folder / REFERENCE_NAME).read_text("utf-8"))
    E = Encoder.from_pretrained(folder)
    if E.fingerprint() != ref["encoder_fingerprint"]:
        raise ReferenceMismatch(f"{folder}: the encoder's weights or config changed since its reference was written")
    if G.fingerprint() != ref["generator_fingerprint"]:
        raise ReferenceMismatch(f"{folder}: the generator is not the one the reference was written with")
    got = encode(E, reference_inputs(G))
    expected = torch.tensor(ref["latents"]).reshape(ref["shape"])
    err = float((got - expected).abs().max())
    if not err <= atol:
        raise ReferenceMismatch(f"{folder}: the encoder's latents differ from its reference by {err:.3g} (> {atol})")
    return err
