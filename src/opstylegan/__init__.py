"""opstylegan: overparameterized StyleGAN2 (a 512x512 latent matrix) for near-perfect inversion.

Importing the package has no side effects: no downloads, no CUDA initialisation, no printing. The names
below are imported on first use (module ``__getattr__``, PEP 562), so ``import opstylegan`` and the
``opstylegan`` command's ``--help`` do not import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"  # the one version string; pyproject.toml reads it (tool.setuptools.dynamic)

# public name -> module that defines it
_LAZY = {
    "Generator": "opstylegan.models.generator",
    "Discriminator": "opstylegan.models.discriminator",
    "GeneratorConfig": "opstylegan.config",
    "DiscriminatorConfig": "opstylegan.config",
}

__all__ = ["Generator", "Discriminator", "GeneratorConfig", "DiscriminatorConfig", "__version__"]

if TYPE_CHECKING:
    from opstylegan.config import DiscriminatorConfig, GeneratorConfig
    from opstylegan.models.discriminator import Discriminator
    from opstylegan.models.generator import Generator


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'opstylegan' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
