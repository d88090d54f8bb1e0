"""Mapping network M: z -> w (pixel-norm, then FC layers with a 0.01 lr multiplier) with w_avg tracking.

It maps any leading shape: the overparameterized latent Z [B, R, z_dim] is mapped row by row in ONE batched
call, W_i = M(Z_i), because the layers act on the last axis only.
"""

from __future__ import annotations

import torch
from torch import nn

from opstylegan.nn.layers import FullyConnectedLayer


def normalize_2nd_moment(x: torch.Tensor, dim: int = -1, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(dim=dim, keepdim=True) + eps).rsqrt()


class MappingNetwork(nn.Module):
    def __init__(self, z_dim: int, w_dim: int, num_layers: int = 2, lr_multiplier: float = 0.01,
                 w_avg_beta: float = 0.995) -> None:
        super().__init__()
        self.z_dim, self.w_dim, self.w_avg_beta = z_dim, w_dim, w_avg_beta
        dims = [z_dim] + [w_dim] * num_layers
        self.layers = nn.ModuleList(
            FullyConnectedLayer(i, o, act="lrelu", lr_multiplier=lr_multiplier)
            for i, o in zip(dims[:-1], dims[1:], strict=True)
        )
        self.register_buffer("w_avg", torch.zeros(w_dim))

    def forward(self, z: torch.Tensor, *, update_emas: bool = False) -> torch.Tensor:
        """z [..., z_dim] -> w [..., w_dim]. With update_emas, w_avg tracks the mean over every vector/row."""
        if z.shape[-1] != self.z_dim:
            raise ValueError(f"mapping: z must end in z_dim={self.z_dim}, got shape {list(z.shape)}")
        x = normalize_2nd_moment(z.to(self.w_avg.dtype))
        for layer in self.layers:
            x = layer(x)
        if update_emas:
            with torch.no_grad():
                batch_mean = x.detach().reshape(-1, self.w_dim).mean(dim=0)
                self.w_avg.copy_(batch_mean.lerp(self.w_avg, self.w_avg_beta))
        return x
