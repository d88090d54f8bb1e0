"""The modulated convolution: ONE code path for the classic style vector and the paper's style matrix.

Classic StyleGAN2 modulates input channel i of every output row o by the same style s[i]:
    Θ'[o, i] = Θ[o, i] * s[i].
The overparameterized model gives each output row its own style vector, a style MATRIX S [O, I]:
    Θ'[o, i] = Θ[o, i] * S[o, i].
The classic case is the rank-1 matrix S = 1 s^T, i.e. styles of shape [B, 1, I] broadcast over o.
Demodulation normalises every output row: Θ''[o] = Θ'[o] / sqrt(sum_{i,kh,kw} Θ'[o]^2 + 1e-8).
"""

from __future__ import annotations

import math

import torch

from opstylegan.nn.resample import conv2d_resample


def modulated_conv2d(
    x: torch.Tensor,
    weight: torch.Tensor,
    styles: torch.Tensor,
    *,
    demodulate: bool = True,
    up: int = 1,
    padding: int = 0,
    resample_filter: torch.Tensor | None = None,
    fused: bool | None = None,
) -> torch.Tensor:
    """Convolve each sample with its own modulated (and demodulated) copy of `weight`.

    Args:
        x: [B, I, H, W] input activations.
        weight: [O, I, k, k] shared convolution weight.
        styles: [B, O, I] style matrices, or [B, 1, I] / [B, I] classic style vectors (rank-1 case).
        demodulate: normalise every output row of the modulated weight (off for ToRGB).
        up: 1, or 2 for a transposed convolution followed by the FIR `resample_filter`.
        padding: spatial zero padding of the convolution.
        fused: True = per-sample weights + grouped convolution; False = scale the activations instead
            (only possible for rank-1 styles; stylegan2-ada's training path). None picks False for
            rank-1 styles and True otherwise. Both give the same result up to rounding.
    Returns:
        [B, O, H*up, W*up].
    """
    if x.ndim != 4 or weight.ndim != 4:
        raise ValueError(f"modulated_conv2d: x must be [B, I, H, W] and weight [O, I, k, k]; "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    b, i, h, w_ = x.shape
    o, wi, kh, kw = weight.shape
    if styles.ndim == 2:
        styles = styles[:, None, :]  # [B, I] -> [B, 1, I]
    if styles.ndim != 3 or styles.shape[0] != b or styles.shape[2] != i or styles.shape[1] not in (1, o):
        raise ValueError(f"modulated_conv2d: styles must be [B={b}, O={o} or 1, I={i}], got {tuple(styles.shape)}")
    if wi != i:
        raise ValueError(f"modulated_conv2d: x has {i} channels but weight expects {wi}")
    rank1 = styles.shape[1] == 1
    if fused is None:
        fused = not rank1
    if not fused and not rank1:
        raise ValueError("modulated_conv2d: fused=False (activation scaling) needs rank-1 styles [B, 1, I]; "
                         "a style matrix modulates every (o, i) pair separately")

    # fp16: pre-normalise to keep the modulated weights in range. Scaling a weight row o, or a style
    # row (b, o), by a positive constant is undone exactly by demodulation.
    if demodulate and x.dtype == torch.float16:
        weight = weight * (1 / math.sqrt(i * kh * kw) / weight.abs().amax(dim=[1, 2, 3], keepdim=True))
        styles = styles / styles.abs().amax(dim=2, keepdim=True)
    weight = weight.to(x.dtype)
    styles = styles.to(x.dtype)

    dcoefs = None
    if demodulate:
        # sum_{i,k} (Θ[o,i,k] S[b,o,i])^2 = sum_i S[b,o,i]^2 * sum_k Θ[o,i,k]^2  -> [B, O], without
        # materialising the [B, O, I, k, k] tensor.
        wsq = weight.square().sum(dim=[2, 3])  # [O, I]
        dcoefs = ((styles.square() * wsq[None]).sum(dim=2) + 1e-8).rsqrt()  # [B, O]

    if not fused:
        # Rank-1: modulate the activations, convolve with the shared weight, demodulate the outputs.
        x = x * styles[:, 0, :, None, None]
        x = conv2d_resample(x, weight, resample_filter, up=up, padding=padding)
        return x * dcoefs[:, :, None, None] if dcoefs is not None else x

    # Fold demodulation into the style first ([B, O, I], small), so the big [B, O, I, k, k] tensor is made
    # by ONE multiplication (and its backward is one op too).
    coefs = styles * dcoefs[:, :, None] if dcoefs is not None else styles
    wm = weight[None] * coefs[:, :, :, None, None]  # [B, O, I, k, k]
    # Grouped convolution: one group per sample. [B, I, H, W] -> [1, B*I, H, W]; weights -> [B*O, I, k, k].
    x = x.reshape(1, b * i, h, w_)
    wm = wm.reshape(b * o, i, kh, kw)
    x = conv2d_resample(x, wm, resample_filter, up=up, padding=padding, groups=b)
    return x.reshape(b, o, x.shape[2], x.shape[3])
