"""StyleGAN2 residual discriminator with minibatch standard deviation (stylegan2-ada's default)."""

from __future__ import annotations

import math

import torch
from torch import nn

from opstylegan.config import DiscriminatorConfig, channels_at
from opstylegan.io.checkpoint import PretrainedMixin
from opstylegan.nn.layers import Conv2dLayer, FullyConnectedLayer


class DiscriminatorBlock(nn.Module):
    """[FromRGB] -> conv -> conv (down 2), plus a 1x1 downsampling skip; both branches scaled by sqrt(0.5)."""

    def __init__(self, in_channels: int, tmp_channels: int, out_channels: int, img_channels: int, *,
                 use_fp16: bool = False, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.in_channels, self.use_fp16 = in_channels, use_fp16
        if in_channels == 0:
            self.fromrgb = Conv2dLayer(img_channels, tmp_channels, 1, act="lrelu", conv_clamp=conv_clamp)
        self.conv0 = Conv2dLayer(tmp_channels, tmp_channels, 3, act="lrelu", conv_clamp=conv_clamp)
        self.conv1 = Conv2dLayer(tmp_channels, out_channels, 3, act="lrelu", down=2, conv_clamp=conv_clamp,
                                 gain=math.sqrt(0.5))
        self.skip = Conv2dLayer(tmp_channels, out_channels, 1, bias=False, down=2, gain=math.sqrt(0.5))

    def forward(self, x: torch.Tensor | None, img: torch.Tensor) -> torch.Tensor:
        dtype = torch.float16 if self.use_fp16 and img.device.type == "cuda" else self.conv0.weight.dtype
        if self.in_channels == 0:
            x = self.fromrgb(img.to(dtype))
        assert x is not None
        x = x.to(dtype)
        y = self.skip(x)
        return y + self.conv1(self.conv0(x))


def _group_size(n: int, group_size: int) -> int:
    """Largest group <= group_size that divides the batch (stylegan2-ada asserts divisibility instead)."""
    g = min(group_size, n)
    while n % g:
        g -= 1
    return g


class MinibatchStdLayer(nn.Module):
    """Appends the mean (over features) standard deviation across a group of samples as extra channels."""

    def __init__(self, group_size: int, num_channels: int = 1) -> None:
        super().__init__()
        self.group_size, self.num_channels = group_size, num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g, f = _group_size(n, self.group_size), self.num_channels
        y = x.reshape(g, -1, f, c // f, h, w)  # [G, n/G, F, c, H, W]: groups of G samples, F channel groups
        y = (y - y.mean(dim=0)).square().mean(dim=0)  # variance over the group
        y = (y + 1e-8).sqrt().mean(dim=[2, 3, 4])  # [n/G, F]
        y = y.reshape(-1, f, 1, 1).repeat(g, 1, h, w)  # [N, F, H, W]
        return torch.cat([x, y], dim=1)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}"


class DiscriminatorEpilogue(nn.Module):
    def __init__(self, channels: int, resolution: int, *, mbstd_group_size: int, mbstd_num_channels: int,
                 conv_clamp: float | None) -> None:
        super().__init__()
        self.mbstd = MinibatchStdLayer(mbstd_group_size, mbstd_num_channels) if mbstd_num_channels > 0 else None
        self.conv = Conv2dLayer(channels + mbstd_num_channels, channels, 3, act="lrelu", conv_clamp=conv_clamp)
        self.fc = FullyConnectedLayer(channels * resolution**2, channels, act="lrelu")
        self.out = FullyConnectedLayer(channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.conv.weight.dtype)
        if self.mbstd is not None:
            x = self.mbstd(x)
        x = self.conv(x)
        return self.out(self.fc(x.flatten(1)))  # [N, 1] logits


class Discriminator(PretrainedMixin, nn.Module):
    config_class = DiscriminatorConfig

    def __init__(self, cfg: DiscriminatorConfig | None = None, **overrides: object) -> None:
        super().__init__()
        cfg = (cfg or DiscriminatorConfig()).replace(**overrides) if overrides else (cfg or DiscriminatorConfig())
        self.cfg = cfg
        log2 = int(math.log2(cfg.img_resolution))
        resolutions = [2**i for i in range(log2, 2, -1)]  # img_resolution .. 8
        fp16_resolution = max(2 ** (log2 + 1 - cfg.num_fp16_res), 8)
        ch = lambda r: channels_at(r, cfg.channel_base, cfg.channel_max)  # noqa: E731
        self.blocks = nn.ModuleList()
        for i, res in enumerate(resolutions):
            self.blocks.append(DiscriminatorBlock(0 if i == 0 else ch(res), ch(res), ch(res // 2), cfg.img_channels,
                                                  use_fp16=cfg.num_fp16_res > 0 and res >= fp16_resolution,
                                                  conv_clamp=cfg.conv_clamp))
        self.epilogue = DiscriminatorEpilogue(ch(4), 4, mbstd_group_size=cfg.mbstd_group_size,
                                              mbstd_num_channels=cfg.mbstd_num_channels, conv_clamp=cfg.conv_clamp)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        """img [N, C, H, W] in [-1, 1] -> logits [N, 1]."""
        c, r = self.cfg.img_channels, self.cfg.img_resolution
        if img.ndim != 4 or img.shape[1:] != (c, r, r):
            raise ValueError(f"discriminator expects images [N, {c}, {r}, {r}], got {list(img.shape)}")
        x = None
        for block in self.blocks:
            x = block(x, img)
        assert x is not None
        return self.epilogue(x)
