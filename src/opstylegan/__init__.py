"""opstylegan: overparameterized StyleGAN2 (a 512x512 latent matrix) for near-perfect inversion.

Importing the package has no side effects: no downloads, no CUDA initialisation, no printing.
"""

__version__ = "0.1.0"

from opstylegan.config import DiscriminatorConfig, GeneratorConfig  # noqa: E402
from opstylegan.models.discriminator import Discriminator  # noqa: E402
from opstylegan.models.generator import Generator  # noqa: E402

__all__ = ["Generator", "Discriminator", "GeneratorConfig", "DiscriminatorConfig", "__version__"]
