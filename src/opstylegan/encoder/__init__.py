"""An encoder for the latent matrix W (and w+): image -> latent in one pass, a starting point for inversion.

``Encoder`` (the network, ``save_pretrained`` / ``from_pretrained``), ``encode(E, images)``, the fingerprint
check that refuses an encoder of another model, and ``train_encoder`` (run folders, exact resume).
Importing this package loads no weights.
"""

from opstylegan.encoder.api import (
    ENCODER_DIR,
    EncoderMismatchError,
    check_encoder,
    encode,
    encode_as,
    load_encoder,
    model_encoder_path,
)
from opstylegan.encoder.model import ENCODER_SPACES, Encoder, EncoderConfig, MappingStatistics, mapping_statistics
from opstylegan.encoder.reference import ReferenceMismatch, check_reference, write_reference
from opstylegan.encoder.train import EncoderTrainConfig, EncoderTrainer, EncoderTrainResult, LatentPrior, train_encoder

__all__ = [
    "ENCODER_DIR",
    "ENCODER_SPACES",
    "Encoder",
    "EncoderConfig",
    "EncoderMismatchError",
    "EncoderTrainConfig",
    "EncoderTrainResult",
    "EncoderTrainer",
    "LatentPrior",
    "MappingStatistics",
    "ReferenceMismatch",
    "check_encoder",
    "check_reference",
    "encode",
    "encode_as",
    "load_encoder",
    "mapping_statistics",
    "model_encoder_path",
    "train_encoder",
    "write_reference",
]
