"""StyleGAN2 losses and regularizers as small free functions (rosinality-style, stylegan2-ada maths).

Latents inside training are always the synthesis input `ws` [B, L, r, C]: L = num_ws style layers,
r = 1 (baseline vector w) or r = R (overparameterized matrix W), C = w_dim.

Provenance: the losses are written for this project from the StyleGAN2 / stylegan2-ada papers' formulas; no
code of stylegan2-ada (NVIDIA Source Code License) or rosinality/stylegan2-pytorch is copied.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from opstylegan.latent import normal_rows, to_ws


def g_nonsaturating_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """Non-saturating logistic generator loss: mean softplus(-D(G(z)))."""
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Logistic discriminator loss: mean softplus(D(fake)) + mean softplus(-D(real))."""
    return F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()


def d_r1_penalty(real_logits: torch.Tensor, real_img: torch.Tensor) -> torch.Tensor:
    """R1: per-image squared norm of dD(x)/dx on reals, [N]. `real_img` must require grad.

    The graph is kept (create_graph) so that the penalty can be back-propagated into D.
    """
    (grad,) = torch.autograd.grad(real_logits.sum(), real_img, create_graph=True)
    return grad.square().sum(dim=[1, 2, 3])


PL_ROWS = ("sum", "mean")


def path_lengths(img: torch.Tensor, ws: torch.Tensor, *, rows: str = "sum",
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Per-image path length |J_ws^T y| for a random image-space direction y, [B].

    y ~ N(0, I) / sqrt(H * W) (so the length does not grow with resolution). The gradient g is taken w.r.t.
    the broadcast ws [B, L, r, C], and the length is sqrt(mean over layers l of |g_l|^2), where g_l is the
    gradient w.r.t. layer l's whole latent:

    - rows="sum" (default): |g_l|^2 sums the squares over the r rows AND the C features, i.e. each layer's
      r x C matrix is that layer's latent, exactly as the baseline's C-vector is (r = 1 gives stylegan2-ada's
      formula). Each row drives its own output channel, so the rows' contributions add up.
    - rows="mean": the rows are averaged like extra layers. This was this project's formula before 0.2; it
      makes overparameterized lengths ~sqrt(r) smaller and the penalty (length - a)^2 ~r times weaker. Kept
      only to reproduce old runs and the ablation in docs/RESULTS.md.
    """
    if ws.ndim != 4:
        raise ValueError(f"path_lengths: ws must be [B, L, r, C], got {list(ws.shape)}")
    if rows not in PL_ROWS:
        raise ValueError(f"path_lengths: rows must be one of {list(PL_ROWS)}, got {rows!r}")
    h, w = img.shape[2], img.shape[3]
    noise = torch.randn(img.shape, generator=generator, device=img.device, dtype=img.dtype) / math.sqrt(h * w)
    (grad,) = torch.autograd.grad((img * noise).sum(), ws, create_graph=True)
    sq = grad.square().sum(dim=3)  # [B, L, r, C] -> [B, L, r]
    per_layer = sq.sum(dim=2) if rows == "sum" else sq.mean(dim=2)  # [B, L]
    return per_layer.mean(dim=1).sqrt()  # [B]


def path_length_penalty(lengths: torch.Tensor, pl_mean: torch.Tensor) -> torch.Tensor:
    """(|J^T y| - a)^2 per image, a = the running mean of path lengths (already updated with this batch)."""
    return (lengths - pl_mean).square()


def update_pl_mean(pl_mean: torch.Tensor, batch_mean: torch.Tensor, decay: float) -> torch.Tensor:
    """Exponential moving average of the path length: a <- a + decay * (mean - a)."""
    return pl_mean.lerp(batch_mean.detach().to(pl_mean.dtype), decay)


def mixing_cutoff(num_ws: int, prob: float, *, generator: torch.Generator | None = None) -> int:
    """Style-mixing cutoff for one batch: with probability `prob` a uniform layer in [1, num_ws), else num_ws
    (no mixing). Layers from the cutoff on take the second latent."""
    device = generator.device if generator is not None else None
    draws = torch.rand([2], generator=generator, device=device).tolist()  # one sync, whatever the device
    cutoff = 1 + min(int(draws[0] * (num_ws - 1)), num_ws - 2) if num_ws > 1 else num_ws
    mix = draws[1] < prob
    return cutoff if mix and num_ws > 1 else num_ws


def style_mix(ws: torch.Tensor, ws2: torch.Tensor, cutoff: int) -> torch.Tensor:
    """ws [B, L, r, C] with layers [cutoff, L) taken from ws2 (a second latent vector or MATRIX)."""
    if cutoff >= ws.shape[1]:
        return ws
    return torch.cat([ws[:, :cutoff], ws2[:, cutoff:]], dim=1)


def sample_ws(G: torch.nn.Module, n: int, *, mixing_prob: float, update_emas: bool,
              generator: torch.Generator | None = None, device: torch.device | None = None,
              spread: float | None = None) -> torch.Tensor:
    """Training latents: z (or the correlated Z) -> mapping -> ws [n, L, r, C], with style mixing.

    Only the first latent updates w_avg (`update_emas`); the mixing latent never does. `spread`: the rows' own
    share of variance (`latent.normal_rows`; None = the generator's own, `Generator.row_spread`), ramped when
    upcycling a baseline.
    """
    if spread is None and G.overparam:
        spread = G.row_spread()
    device = device if device is not None else G.w_avg.device
    rows = G.rows if G.overparam else None
    space = G.native_space
    kw = dict(num_ws=G.num_ws, rows=G.rows, w_dim=G.cfg.w_dim)
    z = normal_rows([n, G.cfg.z_dim], rows=rows, generator=generator, device=device, spread=spread)  # [n, (R,) z_dim]
    ws = to_ws(G.mapping(z, update_emas=update_emas), space, **kw)  # [n, L, r, C] (a broadcast view)
    if mixing_prob > 0:
        # The second latent is always drawn, so the RNG stream does not depend on the cutoff.
        cutoff = mixing_cutoff(G.num_ws, mixing_prob, generator=generator)
        z2 = normal_rows([n, G.cfg.z_dim], rows=rows, generator=generator, device=device, spread=spread)
        if cutoff < G.num_ws:
            ws = style_mix(ws, to_ws(G.mapping(z2), space, **kw), cutoff)
    return ws
