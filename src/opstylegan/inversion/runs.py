"""Inverting a set of image files into one run folder (what `opstylegan invert` does), shardable with torchrun.

Layout of ``outdir`` (``<dir>`` per space: ``w``, ``w-plus``, ``W-matrix``, ``W-matrix-plus``; distinct names
even on case-insensitive file systems; ``<stem>`` is the image's path inside its folder, ``/`` -> ``__``,
without extension, made unique among the inputs (ignoring case) by a ``-<n>`` suffix):

    <dir>/<stem>.safetensors   the latent (see latents_io), metadata: space, fingerprint, source, steps, lpips
    <dir>/<stem>.png           the reconstruction
    <dir>/pairs/<stem>.png     target | reconstruction (a folder of its own: no input name can collide with it)
    comparison.png             target | each space for the first 16 images, enlarged, labelled, LPIPS under each
    summary.json               per image final LPIPS / MSE / PSNR, their median / Q1 / Q3 per space, skipped files
    lpips_curves.csv           per step Q1 / median / Q3 of LPIPS per space (fig. 6 data)
    lpips_per_image.csv        the raw per-step, per-image LPIPS
    lpips_curves.png           fig. 6 (needs matplotlib: ``pip install opstylegan[plots]``; skipped without)
    run.json                   what the run is: model fingerprint, spaces, options, batch, ranks, inputs' sha256
    partial/rank<r>.json       each rank's results, rewritten after every chunk (merged into summary.json)
    .opstylegan.lock           held while the run writes (see opstylegan.io.lock)

Images are prepared as documented in :func:`load_target`. An image's outputs are written as soon as its chunk
finishes, so a crash or a bad file later on loses nothing already done. With several ranks (torchrun), rank r
takes images r, r + W, r + 2W, ... of the sorted list; rank 0 merges every rank's partial file at the end.

One folder holds one run. A run into a folder that already holds one (its ``run.json``) resumes it when the
model, spaces, options, batch size, number of ranks and input images (by content) are all the same: every chunk
already finished (its results recorded and its files present) is reused as it is, the others are computed, and
the summary counts the reused chunks. A chunk's result depends only on these, so a resumed run ends with the
files a run without interruption writes. Anything else refuses the folder with :class:`RunFolderError` naming
what differs, unless ``overwrite=True``, which first removes the earlier run's outputs (only the files of its
record, and the names above). The folder is locked while it is written, so a second run into it at the same
time fails at once naming the first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
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
    save_image,
)
from opstylegan.data.images import to_tensor as image_to_tensor
from opstylegan.inversion.curves import PLOTS_HINT, plot_lpips_curves, write_curves_csv, write_per_image_csv
from opstylegan.inversion.latents_io import save_latent
from opstylegan.inversion.projector import InversionOptions, InversionProgress, invert
from opstylegan.io.atomic import write_text
from opstylegan.io.images_out import labelled_grid
from opstylegan.io.lock import LOCK_NAME, RunLock
from opstylegan.latent import check_space
from opstylegan.models.generator import Generator

__all__ = [
    "OUTPUT_NAMES",
    "RUN_RECORD",
    "SPACE_DIRS",
    "ImageItem",
    "InputError",
    "RunFolderError",
    "SummaryWriteError",
    "collect_images",
    "invert_images",
    "load_target",
    "merge_partials",
    "prepare_run_folder",
    "run_record",
    "shard",
]

SPACE_DIRS = {"w": "w", "w+": "w-plus", "W": "W-matrix", "W+": "W-matrix-plus"}
ON_ERROR = ("skip", "fail")


RUN_RECORD = "run.json"
PAIRS_DIR = "pairs"
COMPARISON_NAME = "comparison.png"
COMPARISON_MAX_ROWS = 16
#: Every name a run writes directly under its folder.
OUTPUT_NAMES = (*SPACE_DIRS.values(), COMPARISON_NAME, "summary.json", "lpips_curves.csv", "lpips_per_image.csv",
                "lpips_curves.png", RUN_RECORD, "partial", LOCK_NAME)


class InputError(ValueError):
    """An input image (named in the message) cannot be used, with ``on_error="fail"``."""


class RunFolderError(ValueError):
    """The run folder holds another run (other model, options or inputs); the message says what differs."""


class SummaryWriteError(OSError):
    """The results were computed but summary.json (or a file beside it) could not be written; ``summary`` holds
    them, so a caller can still show or save them elsewhere."""

    def __init__(self, message: str, summary: dict[str, Any]) -> None:
        super().__init__(message)
        self.summary = summary


@dataclass(frozen=True)
class ImageItem:
    """One input image: ``index`` in the sorted global list, ``name`` for messages, ``stem`` for output files."""

    index: int
    name: str
    stem: str
    files: ImageFiles
    file_index: int


def collect_images(paths: Sequence[str | os.PathLike[str]], *,
                   exclude: Sequence[str | os.PathLike[str]] = ()) -> list[ImageItem]:
    """Every image of the given folders (recursive), zips and files, in order, with unique output stems.

    Stems are unique ignoring case (``A.png`` and ``a.jpg`` would share a file on macOS): a repeated stem gets
    its extension (``a_png``, ``a_jpg``), then ``-1``, ``-2``, ... Files under a path of ``exclude`` (e.g. a run
    folder's outputs when the run folder lies inside an input folder) are left out.

    Raises FileNotFoundError for a missing path and ValueError when nothing is found.
    """
    skip = [Path(p).resolve() for p in exclude]
    found: list[tuple[str, ImageFiles, int, str]] = []
    for p in paths:
        files = ImageFiles(p)
        for k, rel in enumerate(files.names):
            if skip and files.kind == "folder":
                full = (files.path / rel).resolve()
                if any(full == x or x in full.parents for x in skip):
                    continue
            found.append((files.display_name(k), files, k, rel))
    if not found:
        raise ValueError(f"no images found in {[str(p) for p in paths]} (looked for {sorted(_exts())})")
    stems = [os.path.splitext(rel)[0].replace("/", "__") for _, _, _, rel in found]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s.casefold()] = counts.get(s.casefold(), 0) + 1
    items: list[ImageItem] = []
    used: set[str] = set()
    for i, ((name, files, k, rel), stem) in enumerate(zip(found, stems, strict=True)):
        if counts[stem.casefold()] > 1:
            stem = rel.replace("/", "__").replace(".", "_")  # a.png and a.jpg -> a_png, a_jpg
        base, j = stem, 1
        while stem.casefold() in used:
            stem, j = f"{base}-{j}", j + 1
        used.add(stem.casefold())
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


# ----------------------------------------------------------------------------------------------------------
# The run record: resume a run, or refuse another one.

def _input_hash(item: ImageItem) -> str:
    try:
        return hashlib.sha256(item.files.read_bytes(item.file_index)).hexdigest()
    except (ImageError, FileNotFoundError, OSError):
        return "unreadable"


def run_record(fingerprint: str, items: Sequence[ImageItem], spaces: Sequence[str], options: InversionOptions, *,
               batch: int, world_size: int) -> dict[str, Any]:
    """What identifies a run (written to ``run.json``): everything a chunk's results depend on."""
    return {"format": "opstylegan-invert-run", "version": 1, "fingerprint": fingerprint, "spaces": list(spaces),
            "options": {**options.to_dict(), "batch_size": batch}, "batch": batch, "world_size": world_size,
            "inputs": [[item.stem, _input_hash(item)] for item in items]}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    diff = []
    if old.get("fingerprint") != new["fingerprint"]:
        diff.append("another model")
    for key in ("spaces", "batch", "world_size"):
        if old.get(key) != new[key]:
            diff.append(f"{key} {old.get(key)} -> {new[key]}")
    old_opts = old.get("options", {})
    diff += [f"{k} {old_opts.get(k)} -> {v}" for k, v in new["options"].items()
             if k != "batch_size" and old_opts.get(k) != v]
    if old.get("inputs") != new["inputs"]:
        before, after = dict(map(tuple, old.get("inputs", []))), dict(map(tuple, new["inputs"]))
        added = len(after.keys() - before.keys())
        removed = len(before.keys() - after.keys())
        changed = sum(before[k] != after[k] for k in before.keys() & after.keys())
        diff.append(f"input images ({added} added, {removed} removed, {changed} changed"
                    f"{'' if added or removed or changed else ', reordered'})")
    return diff or ["the run record"]


def _remove_outputs(out: Path, old: dict[str, Any] | None) -> None:
    """Remove an earlier run's outputs: the files of its record (or, without one, the space folders)."""
    for d in SPACE_DIRS.values():
        folder = out / d
        if not folder.is_dir():
            continue
        if old is None:
            shutil.rmtree(folder)
            continue
        for stem, _ in old.get("inputs", []):
            for f in (folder / f"{stem}.safetensors", folder / f"{stem}.png", folder / PAIRS_DIR / f"{stem}.png"):
                f.unlink(missing_ok=True)
        for f in (folder / PAIRS_DIR, folder):
            if f.is_dir() and not any(f.iterdir()):
                f.rmdir()
    shutil.rmtree(out / "partial", ignore_errors=True)
    for name in (COMPARISON_NAME, "summary.json", "lpips_curves.csv", "lpips_per_image.csv", "lpips_curves.png",
                 RUN_RECORD):
        (out / name).unlink(missing_ok=True)


def prepare_run_folder(out: str | os.PathLike[str], record: dict[str, Any], *, overwrite: bool = False) -> bool:
    """Make ``out`` hold the run ``record``: True when it already does (resume), False for a fresh start.

    Raises:
        RunFolderError: ``out`` holds another run, or outputs without a run record, and not ``overwrite``.
    """
    out = Path(out)
    path = out / RUN_RECORD
    old: dict[str, Any] | None = None
    if path.is_file():
        try:
            old = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            old = None
        if old == record:
            return True
        if not overwrite:
            what = ("an unreadable run record" if old is None
                    else "another run (" + "; ".join(_differences(old, record)) + ")")
            raise RunFolderError(f"{out} holds {what}; a run folder holds one run. Repeat that run's command to "
                                 "resume it, write to another --outdir, or add --overwrite to replace it")
    else:
        leftovers = [n for n in OUTPUT_NAMES if n not in (LOCK_NAME, RUN_RECORD) and (out / n).exists()]
        if leftovers and not overwrite:
            raise RunFolderError(f"{out} holds outputs of an earlier run ({', '.join(leftovers)}) without its run "
                                 "record, so it can be neither resumed nor mixed with; write to another --outdir "
                                 "or add --overwrite to replace them")
    if overwrite:
        _remove_outputs(out, old)
    write_text(path, json.dumps(record, indent=1) + "\n")
    return False


def _reusable(out: Path, chunk: Sequence[ImageItem], spaces: Sequence[str],
              old: dict[str, Any]) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]] | None:
    """The recorded results of a finished chunk if every one of its files is still there, else None."""
    indices = {it.index: it for it in chunk}
    skipped = [dict(r) for r in old.get("skipped", []) if r.get("index") in indices]
    done = {r["index"] for r in skipped}
    results: dict[str, list[dict[str, Any]]] = {}
    for space in spaces:
        records = [dict(r) for r in old.get("results", {}).get(space, []) if r.get("index") in indices]
        if {r["index"] for r in records} | done != set(indices) or len(records) + len(skipped) != len(chunk):
            return None
        for r in records:
            if not all((out / r[k]).is_file() for k in ("latent", "reconstruction", "pair")):
                return None
            r["image"] = indices[r["index"]].name  # the same file may be named by another path this time
        results[space] = records
    for r in skipped:
        r["image"] = indices[r["index"]].name
    return results, skipped


# ----------------------------------------------------------------------------------------------------------
# The run.

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
    overwrite: bool = False,
    lock: bool = True,
    progress: Callable[[str, InversionProgress], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    on_reuse: Callable[[int], None] | None = None,
) -> dict[str, Any] | None:
    """Invert ``items`` (this rank's shard of them) into every space of ``spaces``; write the run folder.

    Args:
        G: Generator (its device is used).
        items: All images, from :func:`collect_images` (every rank passes the same list).
        spaces: Latent spaces, e.g. ``["w+", "W", "W+"]``; all are checked before any work.
        outdir: Run folder; one that holds this very run is resumed, another run is refused (module docstring).
        options: Projector options (``options.batch_size`` is replaced by ``batch``: ``batch`` images are
            loaded, optimised and written at a time, and the summary records it).
        batch: Images per chunk.
        on_error: ``"skip"``: report unreadable images through ``on_skip(name, reason)`` and go on;
            ``"fail"``: decode every image of this shard first and raise :class:`InputError` on the first bad
            one, before any optimisation.
        rank, world_size, barrier: Sharding (see module docstring). Rank 0 locks and prepares the folder, then
            ``barrier`` lets the others start; it is called again before rank 0 merges.
        lpips: A LPIPS module to reuse (default: VGG, resize_to=256).
        model_source: Recorded in the summary and latent files.
        overwrite: Replace another run found in ``outdir`` instead of refusing it.
        lock: Lock ``outdir`` on rank 0 while writing (a caller that holds the lock itself passes False).
        progress: ``progress(space, InversionProgress)`` after every step.
        on_chunk: ``on_chunk(done, total)`` after every chunk, in images of this shard.
        on_reuse: ``on_reuse(n)`` for every finished chunk of ``n`` images reused from an earlier run.

    Raises:
        RunFolderError: ``outdir`` holds another run (and not ``overwrite``).
        opstylegan.io.lock.RunLockedError: Another process is writing ``outdir``.
        SummaryWriteError: Everything was computed but the summary files could not be written.

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
    options = dataclasses.replace(options, batch_size=batch)
    out = Path(outdir)
    mine = shard(items, rank, world_size)
    if on_error == "fail":
        for item in mine:
            try:
                load_target(item, G)
            except (ImageError, FileNotFoundError) as e:
                raise InputError(f"cannot use input image {item.name}: {e}") from None
    fingerprint = G.fingerprint()
    record = run_record(fingerprint, items, spaces, options, batch=batch, world_size=world_size)
    run_lock = RunLock(out) if lock and rank == 0 else None
    if run_lock is not None:
        run_lock.acquire()
    try:
        if rank == 0:
            resumed = prepare_run_folder(out, record, overwrite=overwrite)
        if barrier is not None:
            barrier()
        if rank != 0:
            resumed = (out / RUN_RECORD).is_file()
            if resumed and json.loads((out / RUN_RECORD).read_text("utf-8")) != record:
                raise RunFolderError(f"{out / RUN_RECORD} does not describe this run (rank {rank})")
        if lpips is None:
            from opstylegan.inversion.projector import default_lpips

            lpips = default_lpips(G.w_avg.device)
        partial_path = out / "partial" / f"rank{rank}.json"
        old: dict[str, Any] = {}
        if resumed and partial_path.is_file():
            try:
                old = json.loads(partial_path.read_text("utf-8"))
            except ValueError:
                old = {}
        partial: dict[str, Any] = {"rank": rank, "world_size": world_size, "skipped": [],
                                   "results": {s: [] for s in spaces}, "chunks_done": [], "reused_chunks": 0,
                                   "reused_images": 0}
        done = 0
        for start in range(0, len(mine), batch):
            part = mine[start:start + batch]
            reuse = _reusable(out, part, spaces, old) if start in old.get("chunks_done", []) else None
            if reuse is not None:
                results, skipped = reuse
                for space in spaces:
                    partial["results"][space] += results[space]
                partial["skipped"] += skipped
                partial["reused_chunks"] += 1
                partial["reused_images"] += len(part)
                if on_reuse is not None:
                    on_reuse(len(part))
            else:
                _run_chunk(G, part, spaces, out, options, lpips, fingerprint, model_source, progress, on_skip,
                           partial)
            partial["chunks_done"].append(start)
            done += len(part)
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
    finally:
        if run_lock is not None:
            run_lock.release()


def _run_chunk(G: Generator, part: Sequence[ImageItem], spaces: Sequence[str], out: Path,
               options: InversionOptions, lpips: nn.Module, fingerprint: str, model_source: str,
               progress: Callable[[str, InversionProgress], None] | None, on_skip: Callable[[str, str], None] | None,
               partial: dict[str, Any]) -> None:
    chunk, targets = [], []
    for item in part:
        try:
            targets.append(load_target(item, G))
            chunk.append(item)
        except (ImageError, FileNotFoundError) as e:
            partial["skipped"].append({"index": item.index, "image": item.name, "reason": str(e)})
            if on_skip is not None:
                on_skip(item.name, str(e))
    if chunk:
        x = torch.cat(targets)  # [n, C, H, W]
        for space in spaces:
            _run_space(G, x, chunk, space, out, options, lpips, fingerprint, model_source, progress,
                       partial["results"][space])


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
        lat, rec, pair = d / f"{item.stem}.safetensors", d / f"{item.stem}.png", d / PAIRS_DIR / f"{item.stem}.png"
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
    """Merge partial results and write summary.json, the two CSVs, comparison.png and the fig. 6 plot.

    The plot comes last and is optional: without matplotlib it is skipped and ``summary["notes"]`` says how to
    get it. Raises :class:`SummaryWriteError` (holding the summary) when a file cannot be written.
    """
    results, curves, names = merge_partials(partials)
    skipped = sorted((s for p in partials for s in p["skipped"]), key=lambda s: s["image"])
    summary: dict[str, Any] = {
        "model": model_source, "fingerprint": fingerprint, "spaces": list(spaces), "options": options.to_dict(),
        "batch_size": options.batch_size, "inputs": num_inputs,
        "inverted": max((r["images"] for r in results.values()), default=0),
        "skipped": skipped, "world_size": len(partials),
        "reused_chunks": sum(p.get("reused_chunks", 0) for p in partials),
        "reused_images": sum(p.get("reused_images", 0) for p in partials),
        "notes": [], "results": results, "files": {s: SPACE_DIRS[s] for s in spaces},
    }
    try:
        if curves:
            write_curves_csv(out / "lpips_curves.csv", curves)
            write_per_image_csv(out / "lpips_per_image.csv", curves, names)
            summary["curves"] = {"csv": "lpips_curves.csv", "per_image_csv": "lpips_per_image.csv", "plot": None}
        if results:
            write_comparison(out / COMPARISON_NAME, results, spaces)
            summary["comparison"] = COMPARISON_NAME
        write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
        if curves:
            try:
                plot_lpips_curves(out / "lpips_curves.png", curves)
            except ImportError:
                summary["notes"].append(f"lpips_curves.png (fig. 6) was not drawn: {PLOTS_HINT}")
            else:
                summary["curves"]["plot"] = "lpips_curves.png"
            write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    except OSError as e:
        from opstylegan.io.outdir import describe_os_error

        raise SummaryWriteError(describe_os_error(e, e.filename or out), summary) from e
    return summary


def write_comparison(path: Path, results: dict[str, Any], spaces: Sequence[str]) -> None:
    """One row per image (the first 16): target | reconstruction in each space, in the order asked; enlarged,
    columns labelled, the LPIPS under each reconstruction, the image's name on the left.

    Made from the pair files already written (their left half is the prepared target).
    """
    out = path.parent
    names = list(results[spaces[0]]["per_image"])[:COMPARISON_MAX_ROWS]
    rows, captions, labels = [], [], []
    for name in names:
        cells: list[np.ndarray] = []
        texts = [""]
        for k, s in enumerate(spaces):
            rec = results[s]["per_image"].get(name)
            if rec is None:  # an image missing from a space (cannot happen in one run; be safe)
                break
            pair = load_image(out / rec["pair"])  # [H, 2W, C]
            w = pair.shape[1] // 2
            if k == 0:
                cells.append(pair[:, :w])  # the target
            cells.append(pair[:, w:])
            texts.append(f"LPIPS {rec['lpips']:.4f}")
        if len(cells) == len(spaces) + 1:
            rows.append(cells)
            captions.append(texts)
            stem = Path(results[spaces[0]]["per_image"][name]["latent"]).stem
            labels.append(stem if len(stem) <= 16 else stem[:15] + "~")
    if rows:
        save_image(path, labelled_grid(rows, col_labels=["target", *spaces], row_labels=labels, captions=captions))
