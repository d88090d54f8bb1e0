"""Models shipped inside the package, and the resolution of `--model NAME_OR_FOLDER`.

The shipped models are small generators trained on Fashion-MNIST 32x32 (see each folder's MODEL_CARD.md):
`fmnist32-overparam` (the default wherever a command takes --model) and `fmnist32-baseline`, trained with the
same configuration and budget.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

SHIPPED = ("fmnist32-overparam", "fmnist32-baseline")
DEFAULT_MODEL = "fmnist32-overparam"


def shipped_model_path(name: str) -> Path:
    """Folder of a shipped model (config.json + model.safetensors + MODEL_CARD.md)."""
    if name not in SHIPPED:
        raise ValueError(f"unknown shipped model {name!r}; shipped models are {list(SHIPPED)}")
    path = Path(str(resources.files(__name__) / name))
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"the shipped model {name!r} is missing from this installation ({path}); "
                                f"reinstall opstylegan or pass --model with a model folder")
    return path


def resolve_model(ref: str | os.PathLike[str]) -> Path:
    """A shipped model's name -> its folder; anything else is taken as a path (checked when loaded)."""
    return shipped_model_path(str(ref)) if str(ref) in SHIPPED else Path(ref)
