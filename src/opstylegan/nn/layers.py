"""Equalized-learning-rate layers and the fused bias + activation + gain + clamp."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from opstylegan.nn.resample import conv2d_resample, setup_filter

_ACT_GAIN = {"linear": 1.0, "lrelu": math.sqrt(2.0)}


def bias_act(x: torch.Tensor, b: torch.Tensor | None = None, *, dim: int = 1, act: str = "linear",
             gain: float = 1.0, clamp: float | None = None) -> torch.Tensor:
    """x + b (broadcast along `dim`), activation, times act_gain * gain, clamped to [-clamp, clamp]."""
    if b is not None:
        shape = [1] * x.ndim
        shape[dim] = -1
        x = x + b.to(x.dtype).reshape(shape)
    if act == "lrelu":
        x = F.leaky_relu(x, 0.2)
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}; expected 'linear' or 'lrelu'")
    g = _ACT_GAIN[act] * gain
    if g != 1:
        x = x * g
    if clamp is not None:
        x = x.clamp(-clamp, clamp)
    return x


class FullyConnectedLayer(nn.Module):
    """Linear layer with runtime weight scaling (equalized lr) and an lr multiplier."""

    def __init__(self, in_features: int, out_features: int, *, bias: bool = True, act: str = "linear",
                 lr_multiplier: float = 1.0, bias_init: float = 0.0) -> None:
        super().__init__()
        self.in_features, self.out_features, self.act = in_features, out_features, act
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init))) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [..., in_features] -> [..., out_features]; works on any leading shape (rows included).
        w = self.weight.to(x.dtype) * self.weight_gain
        b = self.bias.to(x.dtype) * self.bias_gain if self.bias is not None else None
        if self.act == "linear":
            return F.linear(x, w, b)
        return bias_act(F.linear(x, w), b, dim=x.ndim - 1, act=self.act)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, act={self.act}"


class Conv2dLayer(nn.Module):
    """Equalized-lr convolution with optional FIR up/down-sampling (used by the discriminator)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True,
                 act: str = "linear", up: int = 1, down: int = 1, conv_clamp: float | None = None,
                 gain: float = 1.0) -> None:
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.act, self.up, self.down, self.conv_clamp, self.gain = act, up, down, conv_clamp, gain
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.weight_gain = 1 / math.sqrt(in_channels * kernel_size**2)
        self.register_buffer("resample_filter", setup_filter(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.to(x.dtype) * self.weight_gain
        x = conv2d_resample(x, w, self.resample_filter, up=self.up, down=self.down, padding=self.padding)
        clamp = self.conv_clamp * self.gain if self.conv_clamp is not None else None
        return bias_act(x, self.bias, act=self.act, gain=self.gain, clamp=clamp)

    def extra_repr(self) -> str:
        return (f"in={self.in_channels}, out={self.out_channels}, act={self.act}, "
                f"up={self.up}, down={self.down}")
