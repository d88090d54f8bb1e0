"""Generator EMA (stylegan2-ada): a half-life of ema_kimg thousand images, ramped up early in training."""

from __future__ import annotations

import torch
from torch import nn


def ema_beta(batch: int, cur_nimg: int, ema_kimg: float, rampup: float | None = 0.05) -> float:
    """beta = 0.5 ** (batch / ema_nimg), ema_nimg = min(ema_kimg * 1000, cur_nimg * rampup).

    With the ramp-up the half-life grows with training, so G_ema tracks G closely at the start (beta = 0
    at cur_nimg = 0: G_ema is a copy of G).
    """
    ema_nimg = ema_kimg * 1000
    if rampup is not None:
        ema_nimg = min(ema_nimg, cur_nimg * rampup)
    return 0.5 ** (batch / max(ema_nimg, 1e-8))


@torch.no_grad()
def update_ema(G_ema: nn.Module, G: nn.Module, beta: float) -> None:
    """p_ema <- p + beta * (p_ema - p) for every parameter; buffers (w_avg) are copied from G."""
    for p_ema, p in zip(G_ema.parameters(), G.parameters(), strict=True):
        p_ema.copy_(p.detach().lerp(p_ema, beta))
    for b_ema, b in zip(G_ema.buffers(), G.buffers(), strict=True):
        b_ema.copy_(b.detach())
