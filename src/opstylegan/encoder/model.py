"""The encoder E: image -> latent in a generator's native matrix space (W, R x C) or w+ (L x C), in one pass.

Architecture (parameter counts in docs/ENCODER.md):

    image [B, C_img, H, H]
      -> 1x1 conv to c(H) channels
      -> residual blocks, each halving the resolution (3x3 conv, 3x3 conv + 2x2 average pool; 1x1 skip),
         down to 4x4, channels c(r) = min(channel_base // r, channel_max) as in StyleGAN2's discriminator
      -> flatten [B, c(4) * 16] -> dense -> features f [B, F]
      -> head: n rows (n = R for W, L for w+) as offsets from w_avg, of rank <= K:
             basis       B(f) = dense(f) reshaped [B, K, C]   (K basis rows, shared by all rows of the image)
             coefficients A(f) = dense(f) reshaped [B, n, K]   (how much of each basis row every row takes)
             latent      = w_avg + (A @ B / sqrt(K)) * w_std                                   [B, n, C]

A dense layer from F features to all n x C numbers would need F * n * C weights (134M for F = n = C = 512);
the basis / coefficient split needs F * K * (n + C) (16.8M for K = 32), and the rank-K offsets are a
starting point that the projector's refinement is free to leave. ``w_avg`` and ``w_std`` (the mapping's mean
and per-feature standard deviation over rows) are buffers copied from the generator, so the network's
outputs are in units of the latent distribution's spread and ``encode`` needs no generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from opstylegan.config import ConfigError, _Config, _is_pow2, channels_at
from opstylegan.io.checkpoint import PretrainedMixin

__all__ = ["ENCODER_SPACES", "Encoder", "EncoderConfig", "MappingStatistics", "mapping_statistics"]

#: Latent spaces an encoder can predict: the overparameterized matrix W, or one vector per layer (w+).
ENCODER_SPACES = ("W", "w+")


@dataclass(frozen=True)
class EncoderConfig(_Config):
    """An encoder's architecture and the generator it was made for.

    Attributes:
        img_resolution, img_channels: The generator's images.
        space: ``"W"`` (R rows, overparameterized models) or ``"w+"`` (L = num_ws rows, any model).
        num_rows: n, the rows predicted: R for ``W``, num_ws for ``w+``.
        w_dim: C, the length of a row.
        channel_base, channel_max: Backbone width, c(r) = min(channel_base // r, channel_max).
        features: F, the length of the image's feature vector.
        num_basis: K, basis rows per image (the rank of the predicted offsets from w_avg).
        generator_fingerprint: ``Generator.fingerprint()`` of the model; an encoder is refused by any other.
    """

    img_resolution: int = 256
    img_channels: int = 3
    space: str = "W"
    num_rows: int = 512
    w_dim: int = 512
    channel_base: int = 16384
    channel_max: int = 512
    features: int = 512
    num_basis: int = 32
    generator_fingerprint: str = ""

    def __post_init__(self) -> None:
        if not _is_pow2(self.img_resolution) or not 16 <= self.img_resolution <= 1024:
            raise ConfigError(f"EncoderConfig: img_resolution must be a power of two in [16, 1024], got "
                              f"{self.img_resolution!r}")
        if self.img_channels not in (1, 3):
            raise ConfigError(f"EncoderConfig: img_channels must be 1 or 3, got {self.img_channels!r}")
        if self.space not in ENCODER_SPACES:
            raise ConfigError(f"EncoderConfig: space must be one of {list(ENCODER_SPACES)}, got {self.space!r}")
        for k in ("num_rows", "w_dim", "channel_base", "channel_max", "features", "num_basis"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"EncoderConfig: {k} must be an int >= 1, got {v!r}")
        if self.channel_base // self.img_resolution < 1:
            raise ConfigError(f"EncoderConfig: channel_base={self.channel_base} gives 0 channels at "
                              f"{self.img_resolution}px; need channel_base >= {self.img_resolution}")
        if not isinstance(self.generator_fingerprint, str):
            raise ConfigError(f"EncoderConfig: generator_fingerprint must be a string, got "
                              f"{self.generator_fingerprint!r}")

    @property
    def latent_shape(self) -> tuple[int, int]:
        """Per-image shape of the predicted latent, (n, C)."""
        return (self.num_rows, self.w_dim)


class _DownBlock(nn.Module):
    """Residual block at resolution r -> r / 2: two 3x3 convolutions and an average pool, plus a 1x1 skip."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(cin, cin, 3, padding=1)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.leaky_relu(self.conv0(x), 0.2)
        y = F.avg_pool2d(F.leaky_relu(self.conv1(y), 0.2), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)  # keeps the variance of the sum


class Encoder(PretrainedMixin, nn.Module):
    """Image -> latent (W or w+) of one generator; see the module docstring for the architecture.

    Example:
        E = Encoder.for_generator(G)           # untrained; train it with opstylegan.encoder.train_encoder
        latents = E(images)                    # [B, *G.latent_shape(E.space)], differentiable
        E.save_pretrained("enc"); E = Encoder.from_pretrained("enc")
    """

    config_class = EncoderConfig

    def __init__(self, cfg: EncoderConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = (cfg or EncoderConfig()).replace(**overrides) if overrides else (cfg or EncoderConfig())
        self.cfg = cfg
        ch = [channels_at(r, cfg.channel_base, cfg.channel_max) for r in self.resolutions] + \
            [channels_at(4, cfg.channel_base, cfg.channel_max)]
        self.from_rgb = nn.Conv2d(cfg.img_channels, ch[0], 1)
        self.blocks = nn.ModuleList(_DownBlock(ch[i], ch[i + 1]) for i in range(len(self.resolutions)))
        self.fc = nn.Linear(ch[-1] * 16, cfg.features)
        n, c, k = cfg.num_rows, cfg.w_dim, cfg.num_basis
        self.basis = nn.Linear(cfg.features, k * c)
        self.coefficients = nn.Linear(cfg.features, n * k)
        with torch.no_grad():  # an untrained encoder answers close to w_avg
            self.coefficients.weight.mul_(0.1)
            self.coefficients.bias.zero_()
        self.register_buffer("w_avg", torch.zeros(c))
        self.register_buffer("w_std", torch.ones(c))

    @property
    def resolutions(self) -> list[int]:
        """Input resolutions of the down blocks: img_resolution, ..., 8."""
        return [2**i for i in range(self.cfg.img_resolution.bit_length() - 1, 2, -1)]

    @property
    def space(self) -> str:
        return self.cfg.space

    @classmethod
    def for_generator(cls, G: nn.Module, *, space: str | None = None, stats: MappingStatistics | None = None,
                      **arch: object) -> Encoder:
        """A new (untrained) encoder for ``G``: shapes and fingerprint from G, ``w_avg`` from G, ``w_std`` from
        ``stats`` (default: :func:`mapping_statistics` of G).

        ``space``: ``"W"`` (default for overparameterized models) or ``"w+"`` (default for the baseline).
        ``arch``: channel_base, channel_max, features, num_basis (defaults: G's channel_base / channel_max).
        """
        from opstylegan.latent import check_space

        space = space or ("W" if G.overparam else "w+")
        if space not in ENCODER_SPACES:
            raise ValueError(f"an encoder predicts a latent in {list(ENCODER_SPACES)}, got space={space!r}")
        check_space(space, overparam=G.overparam)
        gc = G.cfg
        cfg = EncoderConfig(img_resolution=gc.img_resolution, img_channels=gc.img_channels, space=space,
                            num_rows=G.rows if space == "W" else G.num_ws, w_dim=gc.w_dim,
                            channel_base=gc.channel_base, channel_max=gc.channel_max,
                            generator_fingerprint=G.fingerprint())
        cfg = cfg.replace(**{k: v for k, v in arch.items() if v is not None})
        E = cls(cfg).to(G.w_avg.device)
        stats = stats or mapping_statistics(G)
        with torch.no_grad():
            E.w_avg.copy_(G.w_avg.detach().float())
            E.w_std.copy_(stats.std)
        return E

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C_img, H, H]`` in [-1, 1] -> latents ``[B, n, C]`` (differentiable)."""
        x = F.leaky_relu(self.from_rgb(images.to(self.w_avg.dtype)), 0.2)
        for block in self.blocks:
            x = block(x)
        f = F.leaky_relu(self.fc(x.flatten(1)), 0.2)  # [B, c(4) * 16] -> [B, F]
        b = f.shape[0]
        n, c, k = self.cfg.num_rows, self.cfg.w_dim, self.cfg.num_basis
        basis = self.basis(f).view(b, k, c)  # [B, K, C]
        coef = self.coefficients(f).view(b, n, k)  # [B, n, K]
        offsets = torch.bmm(coef, basis) / math.sqrt(k)  # [B, n, C], rank <= K
        return self.w_avg + offsets * self.w_std


@dataclass(frozen=True)
class MappingStatistics:
    """Mean and covariance (float64) and per-feature std (float32) of the rows G's mapping produces."""

    mean: torch.Tensor
    std: torch.Tensor
    cov: torch.Tensor


@torch.no_grad()
def mapping_statistics(G: nn.Module, *, num_rows: int = 65536, seed: int = 0, batch: int = 256
                       ) -> MappingStatistics:
    """Statistics of the (untruncated) rows of G's mapping from about ``num_rows`` rows, z drawn with ``seed``.

    For an overparameterized model every row of every sampled W counts (the rows share one distribution), so
    ceil(num_rows / R) matrices are drawn.
    """
    gen = torch.Generator().manual_seed(seed)
    c = G.cfg.w_dim
    num_samples = -(-num_rows // G.rows)
    total = torch.zeros(c, dtype=torch.float64)
    outer = torch.zeros(c, c, dtype=torch.float64)
    count = 0
    for start in range(0, num_samples, batch):
        n = min(batch, num_samples - start)
        w = G.mapping(G.sample_z(n, generator=gen)).reshape(-1, c).double().cpu()  # rows [m, C]
        total += w.sum(0)
        outer += w.T @ w
        count += w.shape[0]
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    return MappingStatistics(mean=mean, std=cov.diagonal().clamp_min(1e-12).sqrt().float(), cov=cov)
