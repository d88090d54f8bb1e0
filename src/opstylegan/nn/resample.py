"""FIR up/down-sampling (upfirdn2d) in pure PyTorch.

The same operation as stylegan2-ada's upfirdn2d: zero-insertion upsampling, padding (negative = crop),
FIR filtering, then decimation. Written with differentiable primitives only, so first and second
derivatives (needed by R1 and the path-length regularizer) come from autograd on CPU and CUDA alike.

Provenance: written for this project from the operation's definition (stylegan2-ada's upfirdn2d, NVIDIA Source
Code License); no code of it is copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def setup_filter(taps: Sequence[float] = (1, 3, 3, 1), *, device: torch.device | None = None) -> torch.Tensor:
    """2-D separable FIR filter from 1-D taps, normalised to unit sum. Returns [k, k]."""
    f = torch.as_tensor(taps, dtype=torch.float32, device=device)
    if f.ndim != 1 or f.numel() < 1:
        raise ValueError(f"filter taps must be a non-empty 1-D sequence, got shape {tuple(f.shape)}")
    f = f[:, None] * f[None, :]
    return f / f.sum()


def _pad4(padding: int | Sequence[int]) -> tuple[int, int, int, int]:
    if isinstance(padding, int):
        return (padding, padding, padding, padding)
    p = tuple(int(v) for v in padding)
    if len(p) == 2:
        return (p[0], p[0], p[1], p[1])
    if len(p) == 4:
        return p  # type: ignore[return-value]
    raise ValueError(f"padding must be an int, (px, py) or (x0, x1, y0, y1); got {padding!r}")


def upfirdn2d(x: torch.Tensor, f: torch.Tensor, *, up: int = 1, down: int = 1,
              padding: int | Sequence[int] = 0, gain: float = 1.0, flip_filter: bool = False) -> torch.Tensor:
    """Upsample by `up`, pad by (x0, x1, y0, y1), filter with the 2-D FIR `f`, downsample by `down`.

    x: [N, C, H, W]; f: [kh, kw]. Output height = (H*up + y0 + y1 - kh) // down + 1.
    """
    if x.ndim != 4:
        raise ValueError(f"upfirdn2d expects [N, C, H, W], got shape {tuple(x.shape)}")
    px0, px1, py0, py1 = _pad4(padding)
    n, c, h, w = x.shape
    if up > 1:
        # Zero insertion: [N, C, H, 1, W, 1] -> pad -> [N, C, H*up, W*up].
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1])
        x = x.reshape(n, c, h * up, w * up)
    # Positive padding pads with zeros, negative padding crops.
    x = F.pad(x, [max(px0, 0), max(px1, 0), max(py0, 0), max(py1, 0)])
    x = x[:, :, max(-py0, 0): x.shape[2] - max(-py1, 0), max(-px0, 0): x.shape[3] - max(-px1, 0)]
    # Depthwise FIR: conv2d correlates, so flip the filter unless asked not to (matches the reference op).
    f = f.to(x.dtype) * (gain ** (f.ndim / 2))
    if not flip_filter:
        f = f.flip(list(range(f.ndim)))
    weight = f[None, None].repeat(c, 1, 1, 1)  # [C, 1, kh, kw]
    x = F.conv2d(x, weight, groups=c)
    if down > 1:
        x = x[:, :, ::down, ::down]
    return x


def upsample2d(x: torch.Tensor, f: torch.Tensor, up: int = 2) -> torch.Tensor:
    """Upsample by `up` with the FIR filter, preserving the signal's mean (gain up^2)."""
    k = f.shape[-1]
    p = ((k + up - 1) // 2, (k - up) // 2)
    return upfirdn2d(x, f, up=up, padding=(p[0], p[1], p[0], p[1]), gain=up**2)


def downsample2d(x: torch.Tensor, f: torch.Tensor, down: int = 2) -> torch.Tensor:
    """Low-pass with the FIR filter and decimate by `down`."""
    k = f.shape[-1]
    p = ((k - down + 1) // 2, (k - down) // 2)
    return upfirdn2d(x, f, down=down, padding=(p[0], p[1], p[0], p[1]))


def conv2d_resample(x: torch.Tensor, w: torch.Tensor, f: torch.Tensor | None = None, *, up: int = 1,
                    down: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    """2-D convolution with optional FIR up/down-sampling by 2, as one fused op.

    x: [N, groups*I, H, W]; w: [groups*O, I, kh, kw] (square kernels). Upsampling uses a stride-2
    transposed convolution followed by the FIR filter (4x fewer multiply-adds than filtering first);
    downsampling filters first and then uses a strided convolution.

    Orientation: every path correlates with `w`, as F.conv2d does (up=2 = zero insertion, then correlation
    with `w`). NVIDIA's StyleGAN2 (`conv2d_resample(..., flip_weight=(up == 1))`) instead applies a true
    convolution in its up-sampling layers, i.e. correlation with `w` flipped in both spatial axes. Training
    from scratch does not care (the kernels are learned either way), but the up-sampling `conv0` weights of
    an NVIDIA network must be flipped with `w.flip([2, 3])` to give the same images here.
    """
    if up not in (1, 2) or down not in (1, 2) or (up > 1 and down > 1):
        raise ValueError(f"conv2d_resample supports up=2 or down=2 (not both); got up={up}, down={down}")
    kw = w.shape[-1]
    if up == 1 and down == 1:
        return F.conv2d(x, w, padding=padding, groups=groups)
    if f is None:
        raise ValueError("conv2d_resample: a FIR filter is required for up/down-sampling")
    fk = f.shape[-1]
    if down > 1:
        p0 = padding + (fk - down + 1) // 2
        p1 = padding + (fk - down) // 2
        x = upfirdn2d(x, f, padding=(p0, p1, p0, p1))
        return F.conv2d(x, w, stride=down, groups=groups)
    # up == 2: transposed conv, then FIR with the remaining padding (gain 4 keeps the mean).
    p0 = padding + (fk + up - 1) // 2 - (kw - 1)
    p1 = padding + (fk - up) // 2 - (kw - up)
    go, i = w.shape[0], w.shape[1]
    o = go // groups
    # [groups*O, I, k, k] -> [groups*I, O, k, k], the layout conv_transpose2d expects. The spatial flip makes
    # the transposed conv equal to zero-insertion followed by conv2d with `w` (the textbook definition).
    wt = w.flip([2, 3]).reshape(groups, o, i, kw, kw).transpose(1, 2).reshape(groups * i, o, kw, kw)
    pt = max(min(-p0, -p1), 0)
    x = F.conv_transpose2d(x, wt, stride=up, padding=pt, groups=groups)
    return upfirdn2d(x, f, padding=(p0 + pt, p1 + pt, p0 + pt, p1 + pt), gain=up**2)
