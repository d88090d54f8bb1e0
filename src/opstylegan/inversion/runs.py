"""Inverting a set of image files into one run folder (what `opstylegan invert` does), shardable with torchrun.

Layout of ``outdir`` (``<dir>`` per space: ``w``, ``w-plus``, ``W-matrix``, ``W-matrix-plus``; distinct names
even on case-insensitive file systems; ``<stem>`` is the image's path inside its folder, ``/`` -> ``__``,
without extension):

    <dir>/<stem>.safetensors   the latent (see latents_io), metadata: space, fingerprint, source, steps, lpips
    <dir>/<stem>.png           the reconstruction
    <dir>/<stem>_pair.png      target | reconstruction
    summary.json               per image final LPIPS / MSE / PSNR, their median / Q1 / Q3 per space, skipped files
    lpips_curves.csv           per step Q1 / median / Q3 of LPIPS per space (fig. 6 data)
    lpips_per_image.csv        the raw per-step, per-image LPIPS
    lpips_curves.png           fig. 6
    partial/rank<r>.json       each rank's results, rewritten after every chunk (merged into summary.json)

Images are prepared as documented in :func:`load_target`. An image's outputs are written as soon as its chunk
finishes, so a crash or a bad file later on loses nothing already done. With several ranks (torchrun), rank r
takes images r, r + W, r + 2W, ... of the sorted list; rank 0 merges every rank's partial file at the end.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from opstylegan.data.images import (
    ImageError,
    ImageFiles,
    center_crop_resize,
    from_tensor,
    load_image,
    save_grid,
    save_image,
)
from opstylegan.data.images import to_tensor as image_to_tensor
from opstylegan.inversion.curves import plot_lpips_curves, write_curves_csv, write_per_image_csv
from opstylegan.inversion.latents_io import save_latent
from opstylegan.inversion.projector import InversionOptions, InversionProgress, invert
from opstylegan.io.atomic import write_text
from opstylegan.latent import check_space
from opstylegan.models.generator import Generator

__all__ = [
    "SPACE_DIRS",
    "ImageItem",
    "InputError",
    "collect_images",
    "dist_info",
    "invert_images",
    "load_target",
    "merge_partials",
    "shard",
]

SPACE_DIRS = {"w": "w", "w+": "w-plus", "W": "W-matrix", "W+": "W-matrix-plus"}
ON_ERROR = ("skip", "fail")


class InputError(ValueError):
    """An input image (named in the message) cannot be used, with ``on_error="fail"``."""


@dataclass(frozen=True)
class ImageItem:
    """One input image: ``index`` in the sorted global list, ``name`` for messages, ``stem`` for output files."""

    index: int
    name: str
    stem: str
    files: ImageFiles
    file_index: int


def collect_images(paths: Sequence[str | os.PathLike[str]]) -> list[ImageItem]:
    """Every image of the given folders (recursive), zips and files, in order, with unique output stems.

    Raises FileNotFoundError for a missing path and ValueError when nothing is found.
    """
    found: list[tuple[str, ImageFiles, int, str]] = []
    for p in paths:
        files = ImageFiles(p)
        for k, rel in enumerate(files.names):
            found.append((files.display_name(k), files, k, rel))
    if not found:
        raise ValueError(f"no images found in {[str(p) for p in paths]} (looked for {sorted(_exts())})")
    stems = [os.path.splitext(rel)[0].replace("/", "__") for _, _, _, rel in found]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    items, used = [], set()
    for i, ((name, files, k, rel), stem) in enumerate(zip(found, stems, strict=True)):
        if counts[stem] > 1:
            stem = rel.replace("/", "__").replace(".", "_")  # a.png and a.jpg -> a_png, a_jpg
        base, j = stem, 1
        while stem in used:
            stem, j = f"{base}-{j}", j + 1
        used.add(stem)
        items.append(ImageItem(i, name, stem, files, k))
    return items


def _exts() -> set[str]:
    from opstylegan.data.images import IMAGE_EXTENSIONS

    return set(IMAGE_EXTENSIONS)


def load_target(item: ImageItem, G: Generator) -> torch.Tensor:
    """Decode an image for G: ``[1, C, res, res]`` in [-1, 1].

    Any mode (RGB, RGBA composited on black, grayscale, palette, 16-bit) is converted to G's channels
    (luma for 1 channel, gray repeated for 3); then the central square is cropped and resized to the model
    resolution with Lanczos (smaller images are upscaled). Raises ImageError naming the file.
    """
    img = load_image(item.files.read_bytes(item.file_index), channels=G.img_channels, name=item.name)
    img = center_crop_resize(img, G.img_resolution, allow_upscale=True, name=item.name)
    return image_to_tensor(np.array(img))  # writable copy; [H, W, C] uint8 -> [1, C, H, W]


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Rank ``rank``'s disjoint share of ``items``: every ``world_size``-th one starting at ``rank``."""
    if not isinstance(world_size, int) or world_size < 1 or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
    return list(items[rank::world_size])


def dist_info(env: dict[str, str] | None = None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun's environment variables; (0, 1, 0) without torchrun."""
    env = dict(os.environ) if env is None else env
    try:
        return int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0))
    except ValueError:
        raise ValueError("RANK / WORLD_SIZE / LOCAL_RANK must be integers (as torchrun sets them)") from None


def _stats(values: Iterable[float]) -> dict[str, float]:
    v = torch.tensor(list(values), dtype=torch.float64)
    q = torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)).tolist()
    return {"median": q[1], "q1": q[0], "q3": q[2], "mean": float(v.mean()), "min": float(v.min()),
            "max": float(v.max())}


def merge_partials(partials: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, torch.Tensor],
                                                                 dict[str, list[str]]]:
    """Merge the ranks' partial results: (summary results per space, LPIPS curves [steps, N], image names).

    Images are ordered by their global index, so the merge is the same whatever the number of ranks.
    """
    results: dict[str, Any] = {}
    curves: dict[str, torch.Tensor] = {}
    names: dict[str, list[str]] = {}
    spaces: list[str] = []
    for p in partials:
        spaces += [s for s in p["results"] if s not in spaces]
    for space in spaces:
        records = sorted((r for p in partials for r in p["results"].get(space, [])), key=lambda r: r["index"])
        if not records:
            continue
        per_image = {r["image"]: {k: r[k] for k in ("lpips", "mse", "psnr", "latent", "reconstruction", "pair")}
                     for r in records}
        results[space] = {"images": len(records),
                          **{m: _stats(r[m] for r in records) for m in ("lpips", "mse", "psnr")},
                          "per_image": per_image}
        curves[space] = torch.tensor([r["curve"] for r in records]).T  # [N, steps] -> [steps, N]
        names[space] = [r["image"] for r in records]
    return results, curves, names


def _pair(target: torch.Tensor, image: torch.Tensor) -> np.ndarray:
    t, r = from_tensor(target), from_tensor(image)  # [1, H, W, C] uint8 each
    return np.concatenate([t[0], r[0]], axis=1)  # side by side: [H, 2W, C]


def invert_images(
    G: Generator,
    items: Sequence[ImageItem],
    spaces: Sequence[str],
    outdir: str | os.PathLike[str],
    options: InversionOptions,
    *,
    batch: int = 16,
    on_error: str = "skip",
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] | None = None,
    lpips: nn.Module | None = None,
    model_source: str = "",
    progress: Callable[[str, InversionProgress], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
) -> dict[str, Any] | None:
    """Invert ``items`` (this rank's shard of them) into every space of ``spaces``; write the run folder.

    Args:
        G: Generator (its device is used).
        items: All images, from :func:`collect_images` (every rank passes the same list).
        spaces: Latent spaces, e.g. ``["w+", "W", "W+"]``; all are checked before any work.
        outdir: Run folder.
        options: Projector options (``options.batch_size`` is ignored: ``batch`` images are loaded, optimised
            and written at a time).
        batch: Images per chunk.
        on_error: ``"skip"``: report unreadable images through ``on_skip(name, reason)`` and go on;
            ``"fail"``: decode every image of this shard first and raise :class:`InputError` on the first bad
            one, before any optimisation.
        rank, world_size, barrier: Sharding (see module docstring); ``barrier`` is called before rank 0 merges.
        lpips: A LPIPS module to reuse (default: VGG, resize_to=256).
        model_source: Recorded in the summary and latent files.
        progress: ``progress(space, InversionProgress)`` after every step.
        on_chunk: ``on_chunk(done, total)`` after every chunk, in images of this shard.

    Returns:
        The summary (also written to ``summary.json``) on rank 0, ``None`` on other ranks.
    """
    spaces = list(dict.fromkeys(spaces))
    if not spaces:
        raise ValueError("give at least one latent space, e.g. ['W']")
    for s in spaces:
        check_space(s, overparam=G.overparam)
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {list(ON_ERROR)}, got {on_error!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    out = Path(outdir)
    mine = shard(items, rank, world_size)
    if on_error == "fail":
        for item in mine:
            try:
                load_target(item, G)
            except (ImageError, FileNotFoundError) as e:
                raise InputError(f"cannot use input image {item.name}: {e}") from None
    if lpips is None:
        from opstylegan.inversion.projector import default_lpips

        lpips = default_lpips(G.w_avg.device)
    fingerprint = G.fingerprint()
    partial: dict[str, Any] = {"rank": rank, "world_size": world_size, "skipped": [],
                               "results": {s: [] for s in spaces}}
    partial_path = out / "partial" / f"rank{rank}.json"
    done = 0
    for start in range(0, len(mine), batch):
        chunk, targets = [], []
        for item in mine[start:start + batch]:
            try:
                targets.append(load_target(item, G))
                chunk.append(item)
            except (ImageError, FileNotFoundError) as e:
                partial["skipped"].append({"image": item.name, "reason": str(e)})
                if on_skip is not None:
                    on_skip(item.name, str(e))
        if chunk:
            x = torch.cat(targets)  # [n, C, H, W]
            for space in spaces:
                _run_space(G, x, chunk, space, out, options, lpips, fingerprint, model_source, progress,
                           partial["results"][space])
        done += len(mine[start:start + batch])
        write_text(partial_path, json.dumps(partial) + "\n")
        if on_chunk is not None:
            on_chunk(done, len(mine))
    if not mine:
        write_text(partial_path, json.dumps(partial) + "\n")
    if barrier is not None:
        barrier()
    if rank != 0:
        return None
    partials = []
    for r in range(world_size):
        p = out / "partial" / f"rank{r}.json"
        if not p.is_file():
            raise RuntimeError(f"rank {r} wrote no results ({p} is missing); did it crash?")
        partials.append(json.loads(p.read_text("utf-8")))
    return write_summary(out, partials, spaces=spaces, options=options, fingerprint=fingerprint,
                         model_source=model_source, num_inputs=len(items))


def _run_space(G: Generator, x: torch.Tensor, chunk: list[ImageItem], space: str, out: Path,
               options: InversionOptions, lpips: nn.Module, fingerprint: str, model_source: str,
               progress: Callable[[str, InversionProgress], None] | None, records: list[dict[str, Any]]) -> None:
    kw = options.to_dict()
    for k in ("batch_size", "record_trajectory", "seed", "autocast"):
        kw.pop(k)
    res = invert(G, x.to(G.w_avg.device), space, **kw, autocast=options.autocast,
                 seed=[options.seed + it.index for it in chunk], lpips=lpips, fingerprint=fingerprint,
                 progress=None if progress is None else (lambda p: progress(space, p)))
    d = out / SPACE_DIRS[space]
    for j, item in enumerate(chunk):
        lat, rec, pair = d / f"{item.stem}.safetensors", d / f"{item.stem}.png", d / f"{item.stem}_pair.png"
        save_latent(lat, res.latents[j], space=space, fingerprint=fingerprint,
                    metadata={"source": item.name, "steps": options.steps, "lpips": f"{float(res.lpips[j]):.6f}",
                              "model": model_source, "options": json.dumps(options.to_dict())})
        save_image(rec, from_tensor(res.images[j:j + 1])[0])
        save_image(pair, _pair(x[j:j + 1], res.images[j:j + 1]))
        records.append({"index": item.index, "image": item.name, "lpips": float(res.lpips[j]),
                        "mse": float(res.mse[j]), "psnr": float(res.psnr[j]),
                        "latent": lat.relative_to(out).as_posix(), "reconstruction": rec.relative_to(out).as_posix(),
                        "pair": pair.relative_to(out).as_posix(),
                        "curve": [round(v, 6) for v in res.lpips_per_step[:, j].tolist()]})


def write_summary(out: Path, partials: Sequence[dict[str, Any]], *, spaces: Sequence[str],
                  options: InversionOptions, fingerprint: str, model_source: str, num_inputs: int) -> dict[str, Any]:
    """Merge partial results and write summary.json, the two CSVs and the fig. 6 plot; returns the summary."""
    results, curves, names = merge_partials(partials)
    skipped = sorted((s for p in partials for s in p["skipped"]), key=lambda s: s["image"])
    summary: dict[str, Any] = {
        "model": model_source, "fingerprint": fingerprint, "spaces": list(spaces), "options": options.to_dict(),
        "inputs": num_inputs, "inverted": max((r["images"] for r in results.values()), default=0),
        "skipped": skipped, "world_size": len(partials), "results": results,
        "files": {s: SPACE_DIRS[s] for s in spaces},
    }
    if curves:
        write_curves_csv(out / "lpips_curves.csv", curves)
        write_per_image_csv(out / "lpips_per_image.csv", curves, names)
        plot_lpips_curves(out / "lpips_curves.png", curves)
        summary["curves"] = {"csv": "lpips_curves.csv", "per_image_csv": "lpips_per_image.csv",
                             "plot": "lpips_curves.png"}
    if results:
        write_comparison(out / COMPARISON_NAME, results, spaces)
        summary["comparison"] = COMPARISON_NAME
    write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


COMPARISON_NAME = "comparison.png"
COMPARISON_MAX_ROWS = 16


def write_comparison(path: Path, results: dict[str, Any], spaces: Sequence[str]) -> None:
    """One row per image (the first 16): target | reconstruction in each space, in the order asked.

    Made from the `_pair.png` files already written (their left half is the prepared target).
    """
    out = path.parent
    names = list(results[spaces[0]]["per_image"])[:COMPARISON_MAX_ROWS]
    rows = []
    for name in names:
        cells = []
        for k, s in enumerate(spaces):
            rec = results[s]["per_image"].get(name)
            if rec is None:  # an image missing from a space (cannot happen in one run; be safe)
                break
            pair = load_image(out / rec["pair"])  # [H, 2W, C]
            w = pair.shape[1] // 2
            if k == 0:
                cells.append(pair[:, :w])  # the target
            cells.append(pair[:, w:])
        if len(cells) == len(spaces) + 1:
            rows.append(np.concatenate(cells, axis=1))
    if rows:
        save_grid(path, np.stack(rows), ncols=1, padding=1)
