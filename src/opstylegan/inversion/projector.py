"""The paper's projector (sec. 4.2): optimise a latent in w, w+, W or W+ so that G(latent) matches a target.

Protocol (the defaults): Adam (lr 0.05, betas (0.9, 0.999)) for 1000 steps on the LPIPS-VGG distance between
G(latent) and the target, as StyleGAN2's projector; every vector / row starts at ``w_avg``; before each step of
the first half, the latent is pulled toward the mean, ``x <- w_avg + 0.9 (x - w_avg)``. No noise optimisation.
Fig. 11's non-injectivity experiment is ``init="random", reg_strength=1.0, reg_until=0.0``.

With ``init="encoder"`` the latents start at an encoder's prediction (:mod:`opstylegan.encoder`) and the pull
goes toward that starting point instead of w_avg (``reg_toward="init"``, the default with an encoder), so the
first half cannot drag the encoder's answer back to the mean; ``steps=0`` returns the encoder's answer alone.

Batching: the targets are optimised together, one latent each. The loss is the SUM of per-image losses, Adam
is element-wise and LPIPS is per image, so each latent follows exactly the path it would follow alone (up to
float rounding of batched convolutions); ``batch_size`` only chunks the work to fit memory.

Step bookkeeping, per step t = 0 .. steps-1: (1) the pull, if t < round(reg_until * steps); (2) the image of
the current latent and its LPIPS, recorded as ``lpips_per_step[t]`` (and ``trajectory[t]``); (3) one Adam step.
The result's latents are those after the last step (``trajectory[steps]``); its final metrics are measured on
their images, clamped to [-1, 1] as they are saved.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import torch
from torch import nn

from opstylegan.latent import broadcast, check_space
from opstylegan.models.generator import Generator

if TYPE_CHECKING:
    from opstylegan.encoder.model import Encoder

__all__ = [
    "FIG11_OPTIONS",
    "InversionOptions",
    "InversionProgress",
    "InversionResult",
    "LOSSES",
    "INITS",
    "initial_latents",
    "invert",
    "lpips_quartiles",
    "mse_psnr",
]

LOSSES = ("lpips", "mse")
INITS = ("w_avg", "random", "encoder")
REG_TARGETS = ("w_avg", "init")
AUTOCAST_DTYPES = (torch.float16, torch.bfloat16)

#: The paper's fig. 11 experiment (non-injectivity): random init, no regularizer.
FIG11_OPTIONS: dict[str, Any] = {"init": "random", "reg_strength": 1.0, "reg_until": 0.0}


@dataclass(frozen=True)
class InversionOptions:
    """Validated projector options (see :func:`invert` for their meaning). Raises ValueError when built wrong."""

    steps: int = 1000
    lr: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    loss: str = "lpips"
    mse_weight: float = 0.0
    init: str = "w_avg"
    reg_strength: float = 0.9
    reg_until: float = 0.5
    seed: int = 0
    batch_size: int | None = None
    autocast: torch.dtype | None = None
    record_trajectory: bool = False
    encoder: str | None = None
    reg_toward: str | None = None

    def __post_init__(self) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(f"{name} must be {expected}, got {getattr(self, name)!r}")

        min_steps = 0 if self.init == "encoder" else 1  # 0 steps: the encoder's answer alone
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < min_steps:
            raise ValueError(f"steps must be an int >= {min_steps}, got {self.steps!r}"
                             + (" (0 steps, the encoder's answer alone, needs init='encoder')" if min_steps else ""))
        if not _finite(self.lr) or self.lr <= 0:
            raise bad("lr", "a finite number > 0")
        b = self.betas
        if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(_finite(x) and 0 <= x < 1 for x in b)):
            raise bad("betas", "two numbers in [0, 1), e.g. (0.9, 0.999)")
        object.__setattr__(self, "betas", (float(b[0]), float(b[1])))
        if self.loss not in LOSSES:
            raise bad("loss", f"one of {list(LOSSES)}")
        if not _finite(self.mse_weight) or self.mse_weight < 0:
            raise bad("mse_weight", "a finite number >= 0")
        if self.loss == "mse" and self.mse_weight != 0:
            raise ValueError(f"mse_weight adds pixel MSE to the LPIPS loss; with loss='mse' leave it at 0, got "
                             f"{self.mse_weight!r}")
        if self.init not in INITS:
            raise bad("init", f"one of {list(INITS)}")
        if self.encoder is not None and (self.init != "encoder" or not isinstance(self.encoder, str)):
            raise ValueError(f"encoder (a path) is only used with init='encoder', got encoder={self.encoder!r} with "
                             f"init={self.init!r}")
        if self.reg_toward is None:  # the encoder's answer is the anchor, not the mean it would be dragged to
            object.__setattr__(self, "reg_toward", "init" if self.init == "encoder" else "w_avg")
        if self.reg_toward not in REG_TARGETS:
            raise bad("reg_toward", f"None or one of {list(REG_TARGETS)} (the pull's target: w_avg or the start)")
        if not _finite(self.reg_strength) or not 0 <= self.reg_strength <= 1:
            raise bad("reg_strength", "a number in [0, 1] (1 = no pull toward w_avg)")
        if not _finite(self.reg_until) or not 0 <= self.reg_until <= 1:
            raise bad("reg_until", "a fraction of the steps in [0, 1] (0 = never, 1 = throughout)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise bad("seed", "an int >= 0")
        if self.batch_size is not None and (isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int)
                                            or self.batch_size < 1):
            raise bad("batch_size", "None (all at once) or an int >= 1")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            raise bad("autocast", "None, torch.float16 or torch.bfloat16")

    @property
    def reg_steps(self) -> int:
        """Number of leading steps that start with the pull (toward ``reg_toward``; 0 when reg_strength is 1)."""
        return 0 if self.reg_strength == 1 else round(self.reg_until * self.steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (dtype as its name)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        d["autocast"] = None if self.autocast is None else str(self.autocast).removeprefix("torch.")
        return d


class InversionProgress(NamedTuple):
    """What a ``progress`` callback receives after every step.

    ``lpips`` is the chunk's per-image LPIPS at this step, ``[n]``, still on the device (read it only when
    you need it: ``.item()`` / ``.cpu()`` waits for the GPU).
    """

    step: int
    steps: int
    chunk: int
    num_chunks: int
    lpips: torch.Tensor


ProgressFn = Callable[[InversionProgress], None]


@dataclass
class InversionResult:
    """Output of :func:`invert` (all tensors on the CPU, float32).

    Attributes:
        latents: Final latents ``[N, *G.latent_shape(space)]``.
        images: Their images ``[N, C, H, W]``, clamped to [-1, 1].
        lpips_per_step: LPIPS of every image at every step, ``[steps, N]`` (paper fig. 6).
        lpips, mse, psnr: Final per-image figures ``[N]``; MSE on images scaled to [0, 1], PSNR in dB (peak 1).
        space: The latent space.
        fingerprint: ``G.fingerprint()`` of the model.
        options: The options used.
        trajectory: With ``record_trajectory``: ``[steps + 1, N, *latent_shape]``; entry t < steps is the latent
            whose LPIPS is ``lpips_per_step[t]``, entry ``steps`` equals ``latents``.
    """

    latents: torch.Tensor
    images: torch.Tensor
    lpips_per_step: torch.Tensor
    lpips: torch.Tensor
    mse: torch.Tensor
    psnr: torch.Tensor
    space: str
    fingerprint: str
    options: InversionOptions
    trajectory: torch.Tensor | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.latents.shape[0]

    def quartiles(self) -> torch.Tensor:
        """Per-step Q1, median, Q3 of the LPIPS over images, ``[steps, 3]`` (the curves of fig. 6)."""
        return lpips_quartiles(self.lpips_per_step)


def lpips_quartiles(lpips_per_step: torch.Tensor) -> torch.Tensor:
    """``[steps, N]`` -> ``[steps, 3]`` = (Q1, median, Q3) over images, linear interpolation (numpy's default)."""
    if lpips_per_step.shape[0] == 0:  # steps=0 (an encoder's answer alone): no curve
        return torch.empty(0, 3)
    q = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    return torch.quantile(lpips_per_step.to(torch.float64), q, dim=1).T.to(torch.float32)  # [3, steps] -> [steps, 3]


def mse_psnr(images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image MSE of images scaled from [-1, 1] to [0, 1], and PSNR = 10 log10(1 / MSE) in dB; ``[N]`` each."""
    mse = ((images.float() - targets.float()) / 2).square().mean(dim=(1, 2, 3))
    psnr = 10 * torch.log10(1 / mse.clamp_min(1e-12))  # a perfect match reads 120 dB, not inf
    return mse, psnr


# ----------------------------------------------------------------------------------------------------------
# Public entry point.

def invert(
    G: Generator,
    targets: torch.Tensor,
    space: str | None = None,
    *,
    steps: int = 1000,
    lr: float = 0.05,
    betas: tuple[float, float] = (0.9, 0.999),
    loss: str = "lpips",
    mse_weight: float = 0.0,
    init: str = "w_avg",
    reg_strength: float = 0.9,
    reg_until: float = 0.5,
    seed: int | Sequence[int] = 0,
    batch_size: int | None = None,
    autocast: torch.dtype | None = None,
    record_trajectory: bool = False,
    encoder: Encoder | str | os.PathLike[str] | None = None,
    reg_toward: str | None = None,
    lpips: nn.Module | None = None,
    fingerprint: str | None = None,
    progress: ProgressFn | None = None,
) -> InversionResult:
    """Invert target images into a latent space of ``G`` (the paper's protocol by default).

    Args:
        G: The generator (any device; the work runs there). Its weights are not changed and get no gradients.
        targets: Images ``[N, C, H, W]`` in [-1, 1] with G's channels and resolution (see
            :func:`opstylegan.data.images.center_crop_resize` and ``to_tensor`` to prepare files).
        space: ``"w"`` / ``"w+"`` (any model) or ``"W"`` / ``"W+"`` (overparam models); default: G's native
            space (``W`` or ``w``), or the encoder's space with ``init="encoder"``. ``W`` on a baseline raises
            :class:`opstylegan.latent.LatentError`.
        steps: Optimisation steps (>= 1; 0 with ``init="encoder"`` returns the encoder's answer).
        lr, betas: Adam's learning rate and betas.
        loss: ``"lpips"`` (VGG16 LPIPS, plus ``mse_weight`` x pixel MSE) or ``"mse"`` (pixel MSE only;
            LPIPS is still recorded).
        mse_weight: Weight of the pixel MSE (images scaled to [0, 1]) added to the LPIPS loss.
        init: ``"w_avg"`` (every vector / row at w_avg), ``"random"`` (z sampled from ``seed`` and mapped;
            vector spaces of an overparam model take row 0 of the mapped Z) or ``"encoder"`` (the encoder's
            prediction, broadcast to ``space``; then ``steps`` may be 0).
        reg_strength: The pull ``x <- a + reg_strength (x - a)`` before each step, ``a`` = ``w_avg`` or the
            starting latent (``reg_toward``); 1 disables it.
        reg_until: Fraction of the steps during which the pull is applied (0 = never, 1 = throughout).
        seed: For ``init="random"``: an int (image i uses seed + i) or one seed per target. A latent depends
            only on its own seed, never on the batch.
        batch_size: Targets optimised at once (``None``: all); only changes speed and memory.
        autocast: ``torch.float16`` / ``torch.bfloat16`` to run G and LPIPS under autocast, or ``None``.
        record_trajectory: Keep every step's latents (``result.trajectory``; memory grows with steps).
        encoder: With ``init="encoder"``: an :class:`opstylegan.encoder.Encoder` or the path of one; default:
            the encoder in G's model folder (``<model>/encoder``). Refused unless made for exactly G.
        reg_toward: The pull's target, ``"w_avg"`` or ``"init"`` (the starting latent); default: ``"init"``
            with ``init="encoder"``, else ``"w_avg"``.
        lpips: An LPIPS module (``opstylegan.metrics.LPIPS``) to reuse; default ``LPIPS("vgg", resize_to=256)``,
            which compares images larger than 256 px at 256 px, as StyleGAN2's projector.
        fingerprint: ``G.fingerprint()`` if already computed (hashing the weights takes a moment).
        progress: Called after every step with an :class:`InversionProgress`.

    Returns:
        An :class:`InversionResult` (CPU tensors).
    """
    E = None
    if init == "encoder":
        E = _resolve_encoder(G, encoder)
        encoder = getattr(E, "source", None) or "(in memory)"
    elif encoder is not None:
        raise ValueError(f"encoder is only used with init='encoder', got init={init!r}")
    space = check_space(space or (E.space if E is not None else G.native_space), overparam=G.overparam)
    opts = InversionOptions(steps=steps, lr=lr, betas=betas, loss=loss, mse_weight=mse_weight, init=init,
                            reg_strength=reg_strength, reg_until=reg_until,
                            seed=seed if isinstance(seed, int) else 0, batch_size=batch_size, autocast=autocast,
                            record_trajectory=record_trajectory, encoder=None if encoder is None else str(encoder),
                            reg_toward=reg_toward)
    targets = check_targets(targets, channels=G.img_channels, size=(G.img_resolution, G.img_resolution))
    seeds = per_image_seeds(seed, len(targets))
    init_latents = None
    if E is not None:
        from opstylegan.encoder.api import encode_as

        fingerprint = fingerprint or G.fingerprint()
        init_latents = encode_as(E, G, targets.to(G.w_avg.device), space, fingerprint=fingerprint,
                                 batch_size=batch_size)
    return project(G, targets, space, opts, seeds=seeds, lpips=lpips, fingerprint=fingerprint, progress=progress,
                   init_latents=init_latents)


def _resolve_encoder(G: Generator, encoder: Encoder | str | os.PathLike[str] | None) -> Encoder:
    """The encoder for ``init="encoder"``: given, loaded from a path, or the one in G's model folder."""
    from opstylegan.encoder.api import load_encoder, model_encoder_path
    from opstylegan.encoder.model import Encoder

    if isinstance(encoder, Encoder):
        return encoder.to(G.w_avg.device)
    if encoder is None:
        source = getattr(G, "source", None)
        if source is None:
            raise ValueError("init='encoder' needs an encoder: pass encoder=Encoder or a path (this generator was "
                             "not loaded from a model folder, so it has no shipped encoder to fall back on)")
        encoder = model_encoder_path(source)
    if not isinstance(encoder, (str, os.PathLike)):
        raise ValueError(f"encoder must be an Encoder, a path or None, got {type(encoder).__name__}")
    return load_encoder(encoder, device=G.w_avg.device)


# ----------------------------------------------------------------------------------------------------------
# Building blocks (shared with PULSE).

def check_targets(targets: torch.Tensor, *, channels: int, size: tuple[int, int], name: str = "targets"
                  ) -> torch.Tensor:
    """Validate a target batch ``[N, C, H, W]`` in [-1, 1]; returns it as float32."""
    if not isinstance(targets, torch.Tensor) or targets.ndim != 4 or not targets.is_floating_point():
        desc = f"{targets.dtype} {list(targets.shape)}" if isinstance(targets, torch.Tensor) else type(targets).__name__
        raise ValueError(f"{name} must be a float tensor [N, C, H, W] in [-1, 1], got {desc}")
    n, c, h, w = targets.shape
    if n == 0:
        raise ValueError(f"{name} is empty; give at least one image")
    if c != channels or (h, w) != size:
        raise ValueError(f"{name} must have shape [N, {channels}, {size[0]}, {size[1]}] for this model, got "
                         f"{list(targets.shape)} (crop and resize images to the model first)")
    if not bool(torch.isfinite(targets).all()):
        raise ValueError(f"{name} contains NaN or inf")
    lo, hi = float(targets.min()), float(targets.max())
    if lo < -1.01 or hi > 1.01:
        raise ValueError(f"{name} must lie in [-1, 1] (x / 127.5 - 1 for uint8), got values in [{lo:.3g}, {hi:.3g}]")
    return targets.float()


def per_image_seeds(seed: int | Sequence[int], n: int) -> list[int]:
    """``seed`` -> one seed per image: int s gives s, s+1, ...; a sequence must have one entry per image."""
    if isinstance(seed, bool):
        raise ValueError(f"seed must be an int >= 0 or a sequence of them, got {seed!r}")
    if isinstance(seed, int):
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        return [seed + i for i in range(n)]
    seeds = [int(s) for s in seed]
    if len(seeds) != n or any(s < 0 for s in seeds):
        raise ValueError(f"seed as a sequence needs one int >= 0 per target ({n}), got {list(seed)!r}")
    return seeds


def initial_latents(G: Generator, space: str, seeds: Sequence[int], *, init: str = "w_avg") -> torch.Tensor:
    """Starting latents ``[len(seeds), *G.latent_shape(space)]`` on G's device, float32, contiguous.

    ``"w_avg"``: every vector / row at ``G.w_avg`` (seeds unused). ``"random"``: z from each seed's own RNG,
    mapped by G (W for overparam models, whose row 0 serves the vector spaces), then broadcast to ``space``.
    """
    space = check_space(space, overparam=G.overparam)
    n = len(seeds)
    shape = G.latent_shape(space)
    w_avg = G.w_avg.detach().float()
    if init == "w_avg":
        return w_avg.expand(n, *shape).clone()  # [C] -> [n, *shape]
    if init != "random":
        raise ValueError(f"init must be one of {list(INITS)}, got {init!r}")
    with torch.no_grad():
        w = G.mapping(G.z_from_seeds(seeds)).float()  # [n, C] or [n, R, C]
    if G.overparam and space in ("w", "w+"):
        w, base = w[:, 0], "w"  # [n, R, C] -> [n, C]: row 0 is a sample of the same distribution
    else:
        base = "W" if G.overparam else "w"
    return broadcast(w, base, space, num_ws=G.num_ws, rows=G.rows).contiguous()


@contextlib.contextmanager
def frozen(*modules: nn.Module) -> Iterator[None]:
    """Temporarily turn off requires_grad on every parameter (restored after), so no .grad is touched."""
    saved = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    try:
        for p, _ in saved:
            p.requires_grad_(False)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


def default_lpips(device: torch.device) -> nn.Module:
    from opstylegan.metrics.lpips import LPIPS

    return LPIPS("vgg", resize_to=256).to(device)


Transform = Callable[[torch.Tensor], torch.Tensor]


def project(G: Generator, targets: torch.Tensor, space: str, opts: InversionOptions, *, seeds: Sequence[int],
            lpips: nn.Module | None = None, fingerprint: str | None = None, progress: ProgressFn | None = None,
            compare: Transform | None = None, init_latents: torch.Tensor | None = None) -> InversionResult:
    """The optimisation behind :func:`invert` and PULSE, on validated inputs.

    ``compare`` maps generated images to what is compared with ``targets`` (PULSE: downsample); ``targets``
    must already be in that form. The result's ``images`` are the full-resolution images; its final metrics
    compare ``compare(images)`` with ``targets``. ``init_latents`` ``[N, *latent_shape]``: the starting latents
    (instead of ``opts.init``'s).
    """
    device = G.w_avg.device
    lpips = lpips.to(device) if lpips is not None else default_lpips(device)
    fingerprint = fingerprint or G.fingerprint()
    n = len(targets)
    if init_latents is not None and tuple(init_latents.shape) != (n, *G.latent_shape(space)):
        raise ValueError(f"init_latents must have shape {[n, *G.latent_shape(space)]}, got {list(init_latents.shape)}")
    if init_latents is None and opts.init == "encoder":
        raise ValueError("init='encoder' needs init_latents (the encoder's prediction); invert() computes them")
    bs = opts.batch_size or n
    num_chunks = math.ceil(n / bs)
    parts: list[dict[str, torch.Tensor]] = []
    with frozen(G, lpips):
        for k in range(num_chunks):
            sl = slice(k * bs, min(n, (k + 1) * bs))
            start = None if init_latents is None else init_latents[sl].to(device)
            parts.append(_project_chunk(G, targets[sl].to(device), space, opts, seeds[sl], lpips, compare,
                                        progress, k, num_chunks, start))
    cat = {key: torch.cat([p[key] for p in parts], dim=1 if key in ("curve", "trajectory") else 0)
           for key in parts[0]}
    return InversionResult(latents=cat["latents"], images=cat["images"], lpips_per_step=cat["curve"],
                           lpips=cat["lpips"], mse=cat["mse"], psnr=cat["psnr"], space=space,
                           fingerprint=fingerprint, options=opts, trajectory=cat.get("trajectory"))


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _project_chunk(G: Generator, targets: torch.Tensor, space: str, opts: InversionOptions, seeds: Sequence[int],
                   lpips: nn.Module, compare: Transform | None, progress: ProgressFn | None, chunk: int,
                   num_chunks: int, start: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    device = targets.device
    n = targets.shape[0]
    compare = compare or (lambda img: img)
    if start is None:
        start = initial_latents(G, space, seeds, init=opts.init)  # [n, *latent_shape]
    x = start.detach().float().clone().contiguous().requires_grad_(True)
    # The pull's target: w_avg (broadcast over every vector / row) or each image's starting latent.
    anchor = G.w_avg.detach().float() if opts.reg_toward == "w_avg" else x.detach().clone()
    optimizer = torch.optim.Adam([x], lr=opts.lr, betas=opts.betas)
    with torch.no_grad(), _autocast(device, opts.autocast):
        target_features = lpips.features(targets)  # computed once: the targets never change
    curve = torch.empty(opts.steps, n, device=device)
    trajectory: list[torch.Tensor] = []
    use_lpips_loss = opts.loss == "lpips"
    use_mse = opts.loss == "mse" or opts.mse_weight > 0
    mse_weight = 1.0 if opts.loss == "mse" else opts.mse_weight
    for t in range(opts.steps):
        if t < opts.reg_steps:
            with torch.no_grad():
                x.sub_(anchor).mul_(opts.reg_strength).add_(anchor)  # x <- a + s (x - a)
        if opts.record_trajectory:
            trajectory.append(x.detach().to("cpu", copy=True))
        with _autocast(device, opts.autocast):
            seen = compare(G.synthesis(x, space, force_fp32=True))
            with torch.set_grad_enabled(use_lpips_loss):
                dist = lpips.distance_from_features(lpips.features(seen), target_features).float()  # [n]
        per_image = dist if use_lpips_loss else torch.zeros_like(dist)
        if use_mse:
            per_image = per_image + mse_weight * ((seen.float() - targets) / 2).square().mean(dim=(1, 2, 3))
        optimizer.zero_grad(set_to_none=True)
        per_image.sum().backward()  # a sum, not a mean: each latent's gradient ignores the others
        optimizer.step()
        curve[t] = dist.detach()
        if progress is not None:
            progress(InversionProgress(t + 1, opts.steps, chunk, num_chunks, curve[t]))
    latents = x.detach()
    with torch.no_grad(), _autocast(device, opts.autocast):
        images = G.synthesis(latents, space, force_fp32=True).float().clamp(-1, 1)
        seen = compare(images)
        final = lpips.distance_from_features(lpips.features(seen), target_features).float()
    mse, psnr = mse_psnr(seen, targets)
    out = {"latents": latents.cpu(), "images": images.cpu(), "curve": curve.cpu(), "lpips": final.cpu(),
           "mse": mse.cpu(), "psnr": psnr.cpu()}
    if opts.record_trajectory:
        trajectory.append(latents.to("cpu", copy=True))
        out["trajectory"] = torch.stack(trajectory)  # [steps + 1, n, *latent_shape]
    return out


def _finite(x: object) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
