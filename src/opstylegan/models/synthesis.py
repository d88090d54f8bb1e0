"""Synthesis network: const 4x4 input, modulated 3x3 convolutions, skip (ToRGB) architecture.

No noise inputs in this project's own models (the paper drops them). Networks converted from NVIDIA pickles
can carry each layer's fixed noise image (`const_noise`), which reproduces their `noise_mode='const'`.

Every layer receives its latent as ws [B, r, C] with r = 1 (a style vector, the baseline) or r = R rows
(the overparameterized model). The affine map turns each row into a style vector, giving styles [B, r, I];
with r = R only the first N_O rows are used, one per output channel (the rows beyond N_O are dropped).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from opstylegan.config import channels_at
from opstylegan.nn.layers import FullyConnectedLayer, bias_act
from opstylegan.nn.modconv import modulated_conv2d
from opstylegan.nn.resample import setup_filter, upsample2d


def _used_rows(w: torch.Tensor, out_channels: int) -> torch.Tensor:
    """w [B, r, C] -> [B, 1, C] (a vector) or the first N_O rows [B, N_O, C] (a matrix; extra rows unused).

    Slicing before the affine map means a 3-channel ToRGB maps 3 rows, not R.
    """
    r = w.shape[1]
    if r == 1:
        return w
    if r < out_channels:
        raise ValueError(f"a latent with {r} rows cannot modulate a layer with {out_channels} output channels; "
                         f"the model needs at least {out_channels} rows")
    return w[:, :out_channels]


class SynthesisLayer(nn.Module):
    """Modulated 3x3 convolution (optionally upsampling x2) [+ constant noise] + bias + lrelu.

    With `const_noise_resolution`, the layer holds a fixed noise image `noise_const` [res, res] (buffer) and a
    learned scalar `noise_strength`; `noise_const * noise_strength` is added to every channel of every sample
    after the convolution and before the bias (NVIDIA's `noise_mode='const'`).
    """

    noise_const: torch.Tensor | None

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, *, up: int = 1,
                 conv_clamp: float | None = None, const_noise_resolution: int | None = None) -> None:
        super().__init__()
        self.in_channels, self.out_channels, self.up, self.conv_clamp = in_channels, out_channels, up, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 3, 3))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        if const_noise_resolution is not None:
            res = const_noise_resolution
            self.register_buffer("noise_const", torch.randn(res, res))
            self.noise_strength = nn.Parameter(torch.zeros([]))
        else:
            self.noise_const = None

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, fused: bool | None = None) -> torch.Tensor:
        styles = self.affine(_used_rows(w, self.out_channels))  # [B, 1 | N_O, I]
        x = modulated_conv2d(x, self.weight, styles, up=self.up, padding=1,
                             resample_filter=self.resample_filter, fused=fused)
        if self.noise_const is not None:
            x = x + (self.noise_const * self.noise_strength).to(x.dtype)  # [H, W] broadcast over [B, O]
        return bias_act(x, self.bias, act="lrelu", clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
    """Modulated 1x1 convolution to image channels, not demodulated."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, *, conv_clamp: float | None = None) -> None:
        super().__init__()
        self.out_channels, self.conv_clamp = out_channels, conv_clamp
        self.affine = FullyConnectedLayer(w_dim, in_channels, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        self.weight_gain = 1 / math.sqrt(in_channels)

    def forward(self, x: torch.Tensor, w: torch.Tensor, *, fused: bool | None = None) -> torch.Tensor:
        styles = self.affine(_used_rows(w, self.out_channels)) * self.weight_gain  # [B, 1 | C_img, I]
        x = modulated_conv2d(x, self.weight, styles, demodulate=False, fused=fused)
        return bias_act(x, self.bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
    """One resolution: (const | upsampling conv) -> conv -> ToRGB added to the upsampled image."""

    def __init__(self, in_channels: int, out_channels: int, w_dim: int, resolution: int, img_channels: int, *,
                 use_fp16: bool = False, conv_clamp: float | None = None, const_noise: bool = False) -> None:
        super().__init__()
        self.in_channels, self.resolution, self.use_fp16 = in_channels, resolution, use_fp16
        noise_res = resolution if const_noise else None
        if in_channels == 0:
            self.const = nn.Parameter(torch.randn(out_channels, resolution, resolution))
        else:
            self.conv0 = SynthesisLayer(in_channels, out_channels, w_dim, up=2, conv_clamp=conv_clamp,
                                        const_noise_resolution=noise_res)
        self.conv1 = SynthesisLayer(out_channels, out_channels, w_dim, conv_clamp=conv_clamp,
                                    const_noise_resolution=noise_res)
        self.torgb = ToRGBLayer(out_channels, img_channels, w_dim, conv_clamp=conv_clamp)
        self.register_buffer("resample_filter", setup_filter(), persistent=False)
        self.num_conv = 1 if in_channels == 0 else 2
        self.num_torgb = 1

    def compute_dtype(self, device: torch.device, *, force_fp32: bool = False) -> torch.dtype:
        """The dtype this block computes in: fp16 on CUDA in the highest-resolution blocks (mixed precision,
        as stylegan2-ada), unless `force_fp32`; otherwise the parameters' dtype (float32, or float64 after
        G.double() for exact numerical tests)."""
        if self.use_fp16 and device.type == "cuda" and not force_fp32:
            return torch.float16
        return self.conv1.weight.dtype

    def forward(self, x: torch.Tensor | None, img: torch.Tensor | None, ws: torch.Tensor, *,
                fused: bool | None = None, force_fp32: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        # ws: [B, num_conv + 1, r, C]; the last entry feeds ToRGB (shared with the next block's first conv).
        param_dtype = self.conv1.weight.dtype
        dtype = self.compute_dtype(ws.device, force_fp32=force_fp32)
        i = 0
        if self.in_channels == 0:
            x = self.const.to(dtype)[None].expand(ws.shape[0], -1, -1, -1)
        else:
            assert x is not None
            x = self.conv0(x.to(dtype), ws[:, i], fused=fused)
            i += 1
        x = self.conv1(x, ws[:, i], fused=fused)
        y = self.torgb(x, ws[:, i + 1], fused=fused).to(param_dtype)
        img = y if img is None else upsample2d(img, self.resample_filter) + y
        return x, img


class SynthesisNetwork(nn.Module):
    def __init__(self, w_dim: int, img_resolution: int, img_channels: int, *, channel_base: int,
                 channel_max: int, num_fp16_res: int = 0, conv_clamp: float | None = None,
                 const_noise: bool = False) -> None:
        super().__init__()
        self.w_dim, self.img_resolution, self.img_channels = w_dim, img_resolution, img_channels
        log2 = int(math.log2(img_resolution))
        self.block_resolutions = [2**i for i in range(2, log2 + 1)]
        fp16_resolution = max(2 ** (log2 + 1 - num_fp16_res), 8)
        self.blocks = nn.ModuleList()
        self.num_ws = 0
        in_ch = 0
        for res in self.block_resolutions:
            out_ch = channels_at(res, channel_base, channel_max)
            block = SynthesisBlock(in_ch, out_ch, w_dim, res, img_channels,
                                   use_fp16=num_fp16_res > 0 and res >= fp16_resolution, conv_clamp=conv_clamp,
                                   const_noise=const_noise)
            self.blocks.append(block)
            self.num_ws += block.num_conv
            in_ch = out_ch
        self.num_ws += 1  # the last block's ToRGB
        self.max_out_channels = max(channels_at(r, channel_base, channel_max) for r in self.block_resolutions)

    def forward(self, ws: torch.Tensor, *, fused: bool | None = None, force_fp32: bool = False) -> torch.Tensor:
        """ws [B, num_ws, r, w_dim] -> images [B, img_channels, H, W] (parameter dtype, about [-1, 1]).

        force_fp32: no fp16 blocks even on CUDA (stylegan2-ada's `force_fp32`), for metrics and inversion.
        """
        if ws.ndim != 4 or ws.shape[1] != self.num_ws or ws.shape[3] != self.w_dim:
            raise ValueError(f"synthesis expects ws [B, {self.num_ws}, r, {self.w_dim}], got {list(ws.shape)}")
        x = img = None
        w_idx = 0
        for block in self.blocks:
            x, img = block(x, img, ws.narrow(1, w_idx, block.num_conv + block.num_torgb), fused=fused,
                           force_fp32=force_fp32)
            w_idx += block.num_conv
        assert img is not None
        return img
