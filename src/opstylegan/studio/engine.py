"""The studio's model side, free of web code: loaded generators with their cached GANSpace (and encoder, if the
model ships one), target preparation through the project's image reader, and the images the page shows.

Every function here takes validated inputs from :mod:`opstylegan.studio.app` and returns bytes or tensors;
none prints. Rendering runs under ``torch.no_grad()`` and never changes a model, so the web threads and the
inversion worker can share one generator.
"""

from __future__ import annotations

import importlib.util
import inspect
import io
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from opstylegan.data.images import ImageError, center_crop_resize, from_tensor, load_image, make_grid, to_tensor
from opstylegan.editing.ganspace import GANSpace, GANSpaceError, apply_direction, fit_ganspace, load_ganspace
from opstylegan.editing.interpolate import lerp_path, save_gif
from opstylegan.latent import LatentError, broadcast
from opstylegan.models.generator import Generator

if TYPE_CHECKING:
    from opstylegan.inversion.projector import InversionResult

__all__ = [
    "GANSPACE_COMPONENTS",
    "GANSPACE_SAMPLES",
    "MAX_UPLOAD_PIXELS",
    "StudioModel",
    "cached_ganspace",
    "common_space",
    "gif_bytes",
    "load_studio_model",
    "png_bytes",
    "prepare_target",
    "render",
    "resolve_cache_dir",
]

log = logging.getLogger("opstylegan.studio")

#: GANSpace fit of every studio model: components kept and vectors analysed (seed 0, no truncation).
GANSPACE_COMPONENTS = 8
GANSPACE_SAMPLES = 20_000
#: Uploads with more pixels than this are refused before decoding (Pillow's own bomb limit is ~179M).
MAX_UPLOAD_PIXELS = 40_000_000


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """``cache_dir`` if given, else ``$OPSTYLEGAN_CACHE``, else ``~/.cache/opstylegan`` (the metrics' cache too)."""
    from opstylegan.metrics.weights import resolve_cache_dir as metrics_cache_dir

    return metrics_cache_dir(cache_dir)


def cached_ganspace(G: Generator, fingerprint: str, cache_dir: Path, *, num_components: int = GANSPACE_COMPONENTS,
                    num_samples: int = GANSPACE_SAMPLES) -> tuple[GANSpace, Path, bool]:
    """The model's GANSpace, fitted once and kept in ``cache_dir/ganspace/`` keyed by the model's fingerprint.

    A cache file that cannot be read (or belongs to another model) is refitted and replaced. Returns
    ``(ganspace, path, fitted_now)``.
    """
    path = cache_dir / "ganspace" / f"{fingerprint[:32]}-k{num_components}-n{num_samples}-s0.safetensors"
    if path.is_file():
        try:
            gs = load_ganspace(path, G)
            if gs.num_components == num_components and gs.num_samples == num_samples:
                return gs, path, False
        except (GANSpaceError, OSError) as e:
            log.warning("refitting GANSpace: the cached %s is unusable (%s)", path, e)
    gs = fit_ganspace(G, num_samples, num_components, seed=0, fingerprint=fingerprint, batch_size=256)
    path.parent.mkdir(parents=True, exist_ok=True)
    gs.save(path)
    return gs, path, True


@dataclass
class StudioModel:
    """A generator served by the studio. ``key`` is how the page names it (``main`` or ``baseline``)."""

    key: str
    name: str
    G: Generator
    fingerprint: str
    ganspace: GANSpace
    ganspace_path: Path
    encoder: Any | None = None

    @property
    def spaces(self) -> list[str]:
        """The latent spaces this model inverts into, its native one first."""
        return ["W", "W+", "w", "w+"] if self.G.overparam else ["w+", "w"]

    def info(self) -> dict[str, Any]:
        G = self.G
        return {"key": self.key, "name": self.name, "overparam": G.overparam, "rows": G.rows, "num_ws": G.num_ws,
                "resolution": G.img_resolution, "channels": G.img_channels, "spaces": self.spaces,
                "native_space": G.native_space, "fingerprint": self.fingerprint,
                "components": [round(float(r) * 100, 1) for r in self.ganspace.explained_variance_ratio],
                "encoder": self.encoder is not None}


def find_encoder(model_dir: Path, G: Generator, fingerprint: str, device: torch.device) -> Any | None:
    """The encoder the model folder ships (``<model>/encoder``), when ``opstylegan.encoder`` is installed.

    A feature check: without the package, or without an encoder for this model, the studio starts every
    inversion at w_avg. An encoder made for another model is refused by the package's own check (logged).
    """
    if importlib.util.find_spec("opstylegan.encoder") is None:
        return None
    try:
        from opstylegan.encoder import load_encoder, model_encoder_path
    except ImportError:
        return None
    try:
        path = model_encoder_path(model_dir)
    except FileNotFoundError:
        return None
    try:
        E = load_encoder(path, G, device=device)
    except Exception as e:  # noqa: BLE001 - a broken or foreign encoder must not stop the studio: say so, go on
        log.warning("not using the encoder in %s: %s", path, e)
        return None
    return E.eval()


def load_studio_model(key: str, ref: str, device: torch.device, cache_dir: Path, *,
                      num_components: int = GANSPACE_COMPONENTS, num_samples: int = GANSPACE_SAMPLES) -> StudioModel:
    """Load a model (folder or shipped name) with its GANSpace (cached) and, if it ships one, its encoder."""
    from opstylegan.pretrained import resolve_model

    folder = resolve_model(ref)
    G = Generator.from_pretrained(folder, device=device).eval()
    G.requires_grad_(False)
    fingerprint = G.fingerprint()
    gs, gs_path, _ = cached_ganspace(G, fingerprint, cache_dir, num_components=num_components,
                                     num_samples=num_samples)
    encoder = find_encoder(Path(folder), G, fingerprint, device)
    return StudioModel(key, str(ref), G, fingerprint, gs, gs_path, encoder)


def encoder_start(m: StudioModel, target: torch.Tensor, space: str) -> torch.Tensor | None:
    """The encoder's latent for ``target`` in ``space`` ([1, *shape]), or None (no encoder, or a space it
    cannot express)."""
    if m.encoder is None:
        return None
    from opstylegan.encoder import encode_as

    try:
        return encode_as(m.encoder, m.G, target.to(m.G.w_avg.device), space, fingerprint=m.fingerprint)
    except LatentError:
        return None


def projector_takes_start() -> bool:
    """True when the projector accepts starting latents (``init_latents=``), which encoder starts need."""
    from opstylegan.inversion.projector import project

    return "init_latents" in inspect.signature(project).parameters


# ----------------------------------------------------------------------------------------------------------
# Images in and out.

def prepare_target(data: bytes, G: Generator, *, name: str, max_pixels: int = MAX_UPLOAD_PIXELS) -> torch.Tensor:
    """Encoded image bytes -> a target ``[1, C, H, W]`` in [-1, 1] for ``G``, as ``opstylegan invert`` prepares
    files: the model's channels, center crop, Lanczos resize (small images upscaled).

    Raises:
        ImageError: empty, not an image, corrupt, truncated, or more than ``max_pixels`` pixels.
    """
    if len(data) > 0:
        try:  # the header alone gives the size; decoding is left to the project's reader
            with Image.open(io.BytesIO(data)) as probe:
                w, h = probe.size
        except Exception:  # noqa: BLE001 - any failure is reported by load_image below, with its reason
            w = h = 0
        if w * h > max_pixels:
            raise ImageError(name, f"refused: {w}x{h} px is more than the studio's limit of {max_pixels:,} pixels")
    img = load_image(data, channels=G.img_channels, name=name)  # [H, W, C] uint8
    img = center_crop_resize(img, G.img_resolution, allow_upscale=True, name=name)
    return to_tensor(np.array(img))  # [1, C, H, W]; a writable copy (Pillow's arrays are read-only)


def png_bytes(images: torch.Tensor | np.ndarray, *, ncols: int | None = None) -> bytes:
    """Float images ``[N, C, H, W]`` in [-1, 1] (or uint8 ``[N, H, W, C]``) -> one PNG (a row for N > 1)."""
    n = images.shape[0]
    grid = make_grid(images, ncols=ncols or n)  # [H, N*W, C]
    pil = Image.fromarray(grid[:, :, 0] if grid.shape[2] == 1 else grid)
    buf = io.BytesIO()
    pil.save(buf, format="PNG")
    return buf.getvalue()


def gif_bytes(images: torch.Tensor, *, fps: float = 10.0, pingpong: bool = True) -> bytes:
    """Float images ``[K, C, H, W]`` in [-1, 1] -> a looping GIF (the project's writer, through a temp file)."""
    frames = from_tensor(images)  # [K, H, W, C] uint8
    with tempfile.TemporaryDirectory(prefix="opstylegan-studio-") as tmp:
        path = save_gif(Path(tmp) / "path.gif", frames, fps=fps, pingpong=pingpong)
        return path.read_bytes()


# ----------------------------------------------------------------------------------------------------------
# Latents and their images.

def render(m: StudioModel, latents: torch.Tensor, space: str) -> torch.Tensor:
    """Images ``[N, C, H, W]`` (CPU, float32, clamped to [-1, 1]) of latents ``[N, *shape]``."""
    with torch.no_grad():
        return m.G.synthesis(latents.to(m.G.w_avg.device), space).float().clamp(-1, 1).cpu()


def seed_latent(m: StudioModel, seed: int, truncation_psi: float) -> tuple[torch.Tensor, str]:
    """A random sample's latent in the native space, ``[1, *shape]`` (same seed, same latent, any batch)."""
    with torch.no_grad():
        return m.G.mapping(m.G.z_from_seeds([seed]), truncation_psi=truncation_psi).cpu(), m.G.native_space


def seed_latents(m: StudioModel, seeds: Sequence[int], truncation_psi: float) -> tuple[torch.Tensor, str]:
    """Latents of several seeds ``[N, *shape]`` in the native space."""
    with torch.no_grad():
        return m.G.mapping(m.G.z_from_seeds(list(seeds)), truncation_psi=truncation_psi).cpu(), m.G.native_space


def edit(m: StudioModel, latent: torch.Tensor, space: str, sigmas: dict[int, float],
         layers: Sequence[int] | None) -> tuple[torch.Tensor, str]:
    """``latent`` ``[1, *shape]`` moved by ``sum_k sigmas[k] * std_k * c_k`` (on ``layers`` only, if given)."""
    gs = m.ganspace
    direction = torch.zeros_like(gs.components[0])
    for k, sigma in sigmas.items():
        if sigma:
            direction = direction + gs.direction(k, float(sigma))
    if layers is not None and list(layers) == list(range(m.G.num_ws)):
        layers = None  # all layers: the same image without leaving the latent's own space
    return apply_direction(latent, space, direction, num_ws=m.G.num_ws, rows=m.G.rows, layers=layers)


#: The richer space two latents of different spaces meet in, without changing either image.
_MEET = {frozenset({"w", "w+"}): "w+", frozenset({"w", "W"}): "W", frozenset({"w", "W+"}): "W+",
         frozenset({"w+", "W+"}): "W+", frozenset({"W", "W+"}): "W+", frozenset({"w+", "W"}): "W+"}


def common_space(a: str, b: str) -> str:
    """The space in which latents of spaces ``a`` and ``b`` can both be written exactly (a == b: itself)."""
    return a if a == b else _MEET[frozenset({a, b})]


def meet(m: StudioModel, a: torch.Tensor, space_a: str, b: torch.Tensor, space_b: str
         ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Two latents re-expressed in their common space (w+ and W go to W+: both images are unchanged)."""
    space = common_space(space_a, space_b)
    G = m.G

    return (broadcast(a, space_a, space, num_ws=G.num_ws, rows=G.rows),
            broadcast(b, space_b, space, num_ws=G.num_ws, rows=G.rows), space)


def interpolation(m: StudioModel, a: torch.Tensor, b: torch.Tensor, space: str, ts: Sequence[float]) -> torch.Tensor:
    """Images along the straight path from ``a`` to ``b`` (``[1, *shape]`` each, one space) at weights ``ts``."""
    path = lerp_path(a, b, torch.tensor(list(ts), dtype=torch.float32))[0]  # [1, K, *shape] -> [K, *shape]
    return render(m, path, space)


# ----------------------------------------------------------------------------------------------------------
# Inversion with a live view.

LiveView = Callable[[int, int, float, torch.Tensor], None]


def invert_live(m: StudioModel, target: torch.Tensor, space: str, steps: int, lpips: torch.nn.Module, *,
                every: int, on_view: LiveView, check_cancelled: Callable[[], None]) -> tuple[InversionResult, bool]:
    """The paper's projector on one target, reporting a live view every ``every`` steps (and the last).

    ``on_view(step, steps, lpips, image [1, C, H, W])`` receives the image whose LPIPS is that step's
    (the projector's ``compare`` hook hands it over, so nothing is synthesised twice). ``check_cancelled``
    runs after every step and may raise to stop. Returns ``(result, started_from_encoder)``.
    """
    from opstylegan.inversion.projector import InversionOptions, InversionProgress, project

    opts = InversionOptions(steps=steps)
    device = m.G.w_avg.device
    seen: list[torch.Tensor] = []

    def capture(images: torch.Tensor) -> torch.Tensor:
        seen[:] = [images]
        return images

    def progress(p: InversionProgress) -> None:
        check_cancelled()
        if p.step == 1 or p.step % every == 0 or p.step == p.steps:
            on_view(p.step, p.steps, float(p.lpips[0]), seen[0].detach()[:1].float().clamp(-1, 1).cpu())

    extra: dict[str, Any] = {}
    start = encoder_start(m, target, space) if projector_takes_start() else None
    if start is not None:
        extra["init_latents"] = start
    result = project(m.G, target.to(device), space, opts, seeds=[0], lpips=lpips, fingerprint=m.fingerprint,
                     progress=progress, compare=capture, **extra)
    return result, start is not None
