"""The generator: mapping + synthesis, speaking the latent spaces w, w+, W, W+."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from opstylegan.config import GeneratorConfig
from opstylegan.io.checkpoint import PretrainedMixin
from opstylegan.latent import check_space, normal_rows, to_ws, truncate, z_from_seeds
from opstylegan.models.mapping import MappingNetwork
from opstylegan.models.synthesis import SynthesisNetwork

TRUNCATION_RANGE = (-1.0, 2.0)


def check_truncation(psi: float) -> float:
    lo, hi = TRUNCATION_RANGE
    if not isinstance(psi, (int, float)) or not math.isfinite(psi) or not lo <= psi <= hi:
        raise ValueError(f"truncation_psi must be a number in [{lo}, {hi}] (1 = no truncation, 0 = w_avg), got {psi!r}")
    return float(psi)


class Generator(PretrainedMixin, nn.Module):
    """StyleGAN2 generator; with `cfg.overparam` the latent is an R x w_dim matrix of correlated rows.

    Example:
        G = Generator(GeneratorConfig(img_resolution=256, overparam=True))
        z = G.z_from_seeds([0, 1])            # [2, R, z_dim]
        W = G.mapping(z, truncation_psi=0.7)  # [2, R, w_dim]   (native space 'W')
        img = G.synthesis(W)                  # [2, 3, 256, 256]
    """

    config_class = GeneratorConfig

    def __init__(self, cfg: GeneratorConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = (cfg or GeneratorConfig()).replace(**overrides) if overrides else (cfg or GeneratorConfig())
        self.cfg = cfg
        self._mapping = MappingNetwork(cfg.z_dim, cfg.w_dim, cfg.mapping_layers, cfg.mapping_lr_multiplier,
                                       cfg.w_avg_beta)
        self._synthesis = SynthesisNetwork(cfg.w_dim, cfg.img_resolution, cfg.img_channels,
                                           channel_base=cfg.channel_base, channel_max=cfg.channel_max,
                                           num_fp16_res=cfg.num_fp16_res, conv_clamp=cfg.conv_clamp,
                                           const_noise=cfg.const_noise)

    # -- vocabulary ---------------------------------------------------------------------------------------
    @property
    def overparam(self) -> bool:
        return self.cfg.overparam

    @property
    def rows(self) -> int:
        """R, latent rows per image (1 for the baseline)."""
        return self.cfg.rows

    @property
    def num_ws(self) -> int:
        """L, the number of style layers (w+ has L vectors, W+ has L matrices)."""
        return self._synthesis.num_ws

    @property
    def native_space(self) -> str:
        """The space the mapping network outputs: 'W' for overparam models, 'w' for the baseline."""
        return "W" if self.overparam else "w"

    @property
    def w_avg(self) -> torch.Tensor:
        """Running mean of the mapping output over all vectors/rows, [w_dim]."""
        return self._mapping.w_avg

    @property
    def img_resolution(self) -> int:
        return self.cfg.img_resolution

    @property
    def img_channels(self) -> int:
        return self.cfg.img_channels

    def latent_shape(self, space: str) -> tuple[int, ...]:
        check_space(space, overparam=self.overparam)
        from opstylegan.latent import latent_shape

        return latent_shape(space, num_ws=self.num_ws, rows=self.rows, w_dim=self.cfg.w_dim)

    # -- sampling -----------------------------------------------------------------------------------------
    def sample_z(self, n: int, *, seed: int | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None) -> torch.Tensor:
        """n latents from one RNG: z [n, z_dim], or the correlated Z [n, R, z_dim] for overparam models."""
        if generator is None and seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        rows = self.rows if self.overparam else None
        z = normal_rows([n, self.cfg.z_dim], rows=rows, generator=generator, spread=self.row_spread())
        return z.to(device if device is not None else self.w_avg.device)

    def z_from_seeds(self, seeds: Sequence[int], *, spread: float | None = None) -> torch.Tensor:
        """One latent per seed from its own RNG: seed s gives the same image whatever the batch size.

        spread: overparam only, the rows' own share of variance (`latent.normal_rows`); None = the model's own
        (`row_spread`).
        """
        rows = self.rows if self.overparam else None
        return z_from_seeds(seeds, self.cfg.z_dim, rows=rows, device=self.w_avg.device,
                            spread=self.row_spread() if spread is None else spread)

    def row_spread(self) -> float | None:
        """The spread this model's latents are drawn with, for `latent.normal_rows`: None for the paper's 0.5
        (the exact (z^(i) + z) / sqrt(2) of models made before `GeneratorConfig.row_spread` existed), else the
        config's value."""
        from opstylegan.config import PAPER_ROW_SPREAD

        a = self.cfg.row_spread
        return None if a == PAPER_ROW_SPREAD else float(a)

    # -- forward ------------------------------------------------------------------------------------------
    def mapping(self, z: torch.Tensor, *, truncation_psi: float = 1.0, update_emas: bool = False) -> torch.Tensor:
        """z [B, z_dim] -> w [B, w_dim]; or Z [B, R, z_dim] -> W [B, R, w_dim] (rows mapped independently)."""
        expect = (self.rows, self.cfg.z_dim) if self.overparam else (self.cfg.z_dim,)
        if z.ndim != len(expect) + 1 or tuple(z.shape[1:]) != expect:
            raise ValueError(f"z for this {'overparam' if self.overparam else 'baseline'} generator must have shape "
                             f"[B, {', '.join(map(str, expect))}], got {list(z.shape)}")
        psi = check_truncation(truncation_psi)
        w = self._mapping(z, update_emas=update_emas)
        return truncate(w, self.w_avg, psi)

    def synthesis(self, latent: torch.Tensor, space: str | None = None, *, fused: bool | None = None,
                  force_fp32: bool = False) -> torch.Tensor:
        """Latent in `space` (default: the native space) -> images [B, C, H, W] in about [-1, 1].

        Images are float32 (float64 after G.double()). On CUDA the `num_fp16_res` highest-resolution blocks
        compute in fp16 unless `force_fp32` (metrics and inversion set it, as stylegan2-ada does for PPL).
        """
        space = check_space(space or self.native_space, overparam=self.overparam)
        ws = to_ws(latent, space, num_ws=self.num_ws, rows=self.rows, w_dim=self.cfg.w_dim)
        return self._synthesis(ws, fused=fused, force_fp32=force_fp32)

    def forward(self, z: torch.Tensor, *, truncation_psi: float = 1.0, update_emas: bool = False) -> torch.Tensor:
        return self.synthesis(self.mapping(z, truncation_psi=truncation_psi, update_emas=update_emas))

    def synthesis_ws(self, ws: torch.Tensor, *, fused: bool | None = None, force_fp32: bool = False) -> torch.Tensor:
        """Low-level: ws [B, num_ws, r, w_dim] (r = 1 or R) -> images. Used by style mixing and regularizers."""
        return self._synthesis(ws, fused=fused, force_fp32=force_fp32)
