"""`opstylegan interpolate`: paths between inverted latents (strips, GIF/MP4, midpoint grids), the editability
metrics of paper table 3 (`interpolate metrics`), and the non-injectivity experiment of fig. 11
(`interpolate injectivity`).

`opstylegan interpolate --model M --latents A B ...` is short for `opstylegan interpolate paths ...`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from opstylegan.cli.common import device_option, load_generator, resolve_device, write_json
from opstylegan.cli.common import model_option as common_model_option

EXAMPLES = """
\b
Examples:
  opstylegan interpolate --model runs/ffhq/best --latents inv/a.safetensors inv/b.safetensors --gif --outdir out
  opstylegan interpolate --model runs/ffhq/best --latents inv/ --all-pairs --steps 7 --outdir out/pairs
  opstylegan interpolate metrics --model runs/ffhq/best --latents inv/ --reference data/celeba100 --outdir out/m
  opstylegan interpolate injectivity --model runs/ffhq/best --target face.png --steps 1000 --outdir out/fig11
"""


class DefaultGroup(click.Group):
    """A group whose first argument, when it is not a subcommand name, goes to the default subcommand `paths`."""

    default_command = "paths"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(name="interpolate", cls=DefaultGroup, epilog=EXAMPLES)
def command() -> None:
    """Interpolate between latents in their own space (w, w+, W, W+); editability metrics; non-injectivity.

    Without a subcommand name, the arguments go to `paths`.
    """


# ----------------------------------------------------------------------------------------------------------
# Shared options.

latents_option = click.option(
    "--latents", "latents_opt", multiple=True, type=click.Path(exists=True),
    help="Latent files (opstylegan invert output) or folders of them: --latents A B C (or repeat --latents).")
latents_argument = click.argument("latents_args", nargs=-1, type=click.Path(exists=True), metavar="[LATENTS]...")
model_option = common_model_option(help="Model folder or shipped name; the one the latents were inverted with.")
outdir_option = click.option("--outdir", type=click.Path(file_okay=False), required=True,
                             help="Where to write the results.")


def _latent_paths(opt: Sequence[str], args: Sequence[str]) -> list[str]:
    """`--latents A B C` parses as option A plus arguments B C; `--latents A --latents B` as options only."""
    if len(opt) > 1 and args:
        raise click.UsageError("give the latents as '--latents A B C' or as '--latents A --latents B', not mixed")
    paths = [*opt, *args]
    if not paths:
        raise click.UsageError("no latents given; use --latents A.safetensors B.safetensors ... (or a folder)")
    return paths


def _outdir(path: str) -> Path:
    """Create --outdir and prove it writable, before any work."""
    from opstylegan.io.outdir import prepare_outdir

    try:
        return prepare_outdir(path)
    except OSError as e:
        raise click.ClickException(str(e)) from None


def _write_failed(e: OSError, out: Path, what: str) -> click.ClickException:
    from opstylegan.io.outdir import describe_os_error

    return click.ClickException(f"{describe_os_error(e, e.filename or out)}; {what}")


def _require(*names: str) -> None:
    from opstylegan.metrics.weights import WeightsError, require_weights

    try:
        require_weights(*names)
    except WeightsError as e:
        raise click.ClickException(str(e)) from None


def _load_set(paths: list[str], G: Any, min_count: int = 2) -> Any:
    from opstylegan.editing.interpolate import LatentMismatchError, load_latent_set
    from opstylegan.inversion.latents_io import LatentFileError
    from opstylegan.latent import LatentError

    try:
        latent_set = load_latent_set(paths, G)
    except (FileNotFoundError, LatentMismatchError, LatentFileError, LatentError) as e:
        raise click.ClickException(str(e)) from None
    if len(latent_set) < min_count:
        raise click.UsageError(f"need at least {min_count} latents, got {len(latent_set)}")
    return latent_set


# ----------------------------------------------------------------------------------------------------------
# paths

@command.command(name="paths", epilog=EXAMPLES)
@model_option
@latents_option
@latents_argument
@click.option("--all-pairs/--consecutive", default=False,
              help="Every pair of latents, or consecutive ones (A-B, B-C, ...).")
@click.option("--steps", type=click.IntRange(2, 1000), default=7, show_default=True,
              help="Images per path, endpoints included.")
@click.option("--max-pairs", type=click.IntRange(1), default=None, help="At most this many pairs (evenly spread).")
@outdir_option
@click.option("--strips/--no-strips", default=True, show_default=True, help="One PNG strip per pair.")
@click.option("--gif/--no-gif", default=False, show_default=True, help="One GIF animation per pair.")
@click.option("--mp4/--no-mp4", default=False, show_default=True,
              help="One MP4 per pair (needs imageio and imageio-ffmpeg).")
@click.option("--fps", type=click.FloatRange(0.1, 100), default=10.0, show_default=True, help="Animation speed.")
@click.option("--pingpong/--no-pingpong", default=False, show_default=True,
              help="Animations run a -> b -> a, for a seamless loop.")
@click.option("--batch", type=click.IntRange(1), default=16, show_default=True,
              help="Images per forward pass (does not change them).")
@device_option
def paths_command(model, latents_opt, latents_args, all_pairs, steps, max_pairs, outdir, strips, gif, mp4, fps,
                  pingpong, batch, device):
    """Linear paths between latents: strips/*.png, animations, and grids of the 50-50 midpoints.

    All latents must share one space and one model. Files are named by pair index (pair0000-0001.png); the
    latents' names are listed in interpolate.json. Strips and midpoint grids are enlarged (nearest neighbour, to
    >= 128 px) and labelled (t along a strip, the pair under each midpoint); animations keep the model's size.
    """
    from opstylegan.data.images import from_tensor, save_image
    from opstylegan.io.images_out import labelled_grid
    from opstylegan.editing.interpolate import (
        MP4_HINT,
        interpolation_ts,
        iter_pairs,
        lerp_path,
        mp4_available,
        num_pairs,
        render_latents,
        save_gif,
        save_mp4,
    )

    if mp4 and not mp4_available():
        raise click.UsageError(MP4_HINT)
    paths = _latent_paths(latents_opt, latents_args)
    dev = resolve_device(device)
    G = load_generator(model, dev)
    lset = _load_set(paths, G)
    out = _outdir(outdir)
    ts = interpolation_ts(steps)
    n = len(lset)
    total = num_pairs(n) if all_pairs else n - 1
    total = min(total, max_pairs) if max_pairs else total
    records: list[dict[str, Any]] = []
    page: list[np.ndarray] = []
    page_names: list[str] = []
    pages: list[str] = []
    page_size = 100
    t_labels = [f"t={t:.2f}" for t in ts.tolist()]

    def flush_page() -> None:
        name = f"midpoints_{len(pages):03d}.png"
        ncols = math.ceil(math.sqrt(len(page)))
        rows = [page[k:k + ncols] for k in range(0, len(page), ncols)]
        captions = [page_names[k:k + ncols] for k in range(0, len(page), ncols)]
        save_image(out / name, labelled_grid(rows, captions=captions))
        pages.append(name)
        page.clear()
        page_names.clear()

    try:
        with click.progressbar(length=total, label="interpolating", file=None) as bar:
            for i, j in iter_pairs(n, all_pairs=all_pairs, max_pairs=max_pairs):
                a, b = lset.latents[i:i + 1], lset.latents[j:j + 1]
                path = lerp_path(a, b, torch.cat([ts, ts.new_tensor([0.5])]))[0]  # [K + 1, *shape]: + midpoint
                try:
                    frames = from_tensor(render_latents(G, path, lset.space, batch_size=batch))  # [K + 1, H, W, C]
                except ValueError as e:
                    raise click.ClickException(f"pair {lset.names[i]} - {lset.names[j]}: {e}") from None
                frames, midpoint = frames[:-1], frames[-1]
                stem = f"pair{i:04d}-{j:04d}"
                rec: dict[str, Any] = {"a": lset.names[i], "b": lset.names[j], "index": [i, j]}
                if strips:
                    save_image(out / "strips" / f"{stem}.png", labelled_grid([list(frames)], col_labels=t_labels))
                    rec["strip"] = f"strips/{stem}.png"
                if gif:
                    save_gif(out / "animations" / f"{stem}.gif", frames, fps=fps, pingpong=pingpong)
                    rec["gif"] = f"animations/{stem}.gif"
                if mp4:
                    save_mp4(out / "animations" / f"{stem}.mp4", frames, fps=fps, pingpong=pingpong)
                    rec["mp4"] = f"animations/{stem}.mp4"
                page.append(midpoint)
                page_names.append(f"{i}-{j}")
                rec["midpoint_grid"] = f"midpoints_{len(pages):03d}.png"
                records.append(rec)
                if len(page) == page_size:
                    flush_page()
                bar.update(1)
        if page:
            flush_page()
        write_json(out / "interpolate.json", {
            "model": str(model), "fingerprint": lset.fingerprint, "space": lset.space, "steps": steps,
            "ts": ts.tolist(), "all_pairs": all_pairs, "latents": [str(p) for p in paths], "names": list(lset.names),
            "midpoint_grids": pages, "midpoints_per_grid": page_size, "pairs": records})
    except OSError as e:
        raise _write_failed(e, out, f"{len(records)} path(s) were written") from None
    click.echo(f"wrote {len(records)} path(s) and {len(pages)} midpoint grid(s) to {out}")


# ----------------------------------------------------------------------------------------------------------
# metrics

@command.command(name="metrics", epilog=EXAMPLES)
@model_option
@latents_option
@latents_argument
@click.option("--reference", type=click.Path(exists=True), required=True,
              help="Real images (an `opstylegan dataset` folder, a folder or zip of images) or their Inception "
                   "statistics (.npz) for the midpoint FID.")
@click.option("--segments", type=click.IntRange(1, 100), default=5, show_default=True,
              help="Segments per path for the perceptual length (the paper: 5).")
@click.option("--max-pairs", type=click.IntRange(1), default=None,
              help="Measure only this many pairs (an evenly spread, deterministic subset).")
@click.option("--reference-max", type=click.IntRange(2), default=None, help="Use at most this many reference images.")
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Cache the reference statistics (under $OPSTYLEGAN_CACHE or ~/.cache/opstylegan).")
@outdir_option
@click.option("--batch", type=click.IntRange(1), default=8, show_default=True,
              help="Pairs rendered at once (does not change the result).")
@device_option
def metrics_command(model, latents_opt, latents_args, reference, segments, max_pairs, reference_max, cache, outdir,
                    batch, device):
    """Editability of inverted latents (paper table 3): FID of all pairs' 50-50 midpoints against the reference
    images, and the mean perceptual path length (sum of LPIPS over the segments). Writes editability.json."""
    import warnings

    from opstylegan.data.images import list_images
    from opstylegan.editing.editability import editability_metrics, reference_stats
    from opstylegan.editing.interpolate import num_pairs
    from opstylegan.metrics.weights import WeightsError

    paths = _latent_paths(latents_opt, latents_args)
    _require("inception", "lpips-vgg")
    dev = resolve_device(device)
    G = load_generator(model, dev)
    lset = _load_set(paths, G)
    out = _outdir(outdir)
    try:
        detector = _detector(dev)
        count = 0 if Path(reference).suffix == ".npz" else len(list_images(reference))
        count = min(count, reference_max or count)
        with click.progressbar(length=count, label="reference features", file=None) as bar:
            ref = reference_stats(reference, detector, resolution=G.img_resolution, channels=G.img_channels,
                                  max_items=reference_max, use_cache=cache,
                                  progress=lambda done, _total: bar.update(done - bar.pos))
        total = min(num_pairs(len(lset)), max_pairs or num_pairs(len(lset)))
        with click.progressbar(length=total, label="pairs", file=None) as bar, warnings.catch_warnings(record=True) \
                as caught:
            warnings.simplefilter("always")
            res = editability_metrics(G, lset.latents, lset.space, ref, detector=detector, num_segments=segments,
                                      max_pairs=max_pairs, batch_size=batch, fingerprint=lset.fingerprint,
                                      progress=lambda p: bar.update(p.pairs_done - bar.pos))
    except (WeightsError, ValueError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    for w in caught:
        click.echo(f"warning: {w.message}", err=True)
    summary = {**res.to_dict(), "model": str(model), "reference": str(reference), "latents": [str(p) for p in paths],
               "pairs": [list(p) for p in res.pairs], "path_lengths": res.path_lengths.tolist()}
    try:
        write_json(out / "editability.json", summary)
    except OSError as e:
        click.echo(json.dumps(summary))
        raise _write_failed(e, out, "the results are printed above") from None
    click.echo(json.dumps({k: summary[k] for k in ("fid", "ppl", "num_pairs", "space")}))


def _detector(device: torch.device) -> Any:
    """The FID feature network (a seam for tests, which swap in a small one)."""
    from opstylegan.metrics.inception import InceptionFeatures

    return InceptionFeatures().to(device)


# ----------------------------------------------------------------------------------------------------------
# injectivity

@command.command(name="injectivity", epilog=EXAMPLES)
@model_option
@click.option("--target", "targets", multiple=True, type=click.Path(exists=True, dir_okay=False), required=True,
              help="Target image (repeat for several); center-cropped and resized to the model.")
@click.option("--space", type=click.Choice(["w", "w+", "W", "W+"]), default=None,
              help="Latent space [default: the model's native one, W or w].")
@click.option("--steps", type=click.IntRange(1), default=1000, show_default=True, help="Projector steps per run.")
@click.option("--points", type=click.IntRange(2, 200), default=9, show_default=True,
              help="Images on the path between the two solutions, endpoints included.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Target i starts from seeds seed + 2i and seed + 2i + 1.")
@outdir_option
@click.option("--gif/--no-gif", default=False, show_default=True, help="Also a GIF per target.")
@device_option
def injectivity_command(model, targets, space, steps, points, seed, outdir, gif, device):
    """Non-injectivity (paper fig. 11): invert each target twice from random inits without regularizer,
    interpolate between the two solutions and measure LPIPS along the path (to the target, between neighbours).

    Writes injectivity.json, one strip per target (target | path), and both solutions as latent files.
    """
    from opstylegan.data import images as image_io
    from opstylegan.editing.injectivity import non_injectivity
    from opstylegan.editing.interpolate import save_gif
    from opstylegan.inversion.latents_io import save_latent
    from opstylegan.io.images_out import labelled_grid
    from opstylegan.latent import LatentError

    _require("lpips-vgg")
    dev = resolve_device(device)
    G = load_generator(model, dev)
    try:
        imgs = [image_io.center_crop_resize(image_io.load_image(t, channels=G.img_channels), G.img_resolution,
                                            allow_upscale=True, name=str(t)) for t in targets]
    except (image_io.ImageError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    target_tensor = image_io.to_tensor(np.stack(imgs))  # [N, H, W, C] uint8 -> [N, C, H, W] in [-1, 1]
    out = _outdir(outdir)
    try:
        with click.progressbar(length=steps, label="inverting twice", file=None) as bar:
            res = non_injectivity(G, target_tensor, space, steps=steps, num_points=points, seed=seed,
                                  progress=lambda p: bar.update(p.step - bar.pos))
    except (LatentError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    summary = res.summary()
    t_labels = ["target", *(f"t={t:.2f}" for t in torch.linspace(0, 1, points, dtype=torch.float64).tolist())]
    try:
        for i, t in enumerate(targets):
            frames = image_io.from_tensor(res.images[i])  # [K, H, W, C]
            to_target = summary["per_target"][i]["lpips_to_target"]
            strip = labelled_grid([[imgs[i], *frames]], col_labels=t_labels,
                                  captions=[["", *(f"LPIPS {v:.4f}" for v in to_target)]])
            image_io.save_image(out / f"target{i:03d}_path.png", strip)
            if gif:
                save_gif(out / f"target{i:03d}_path.gif", frames, pingpong=True)
            for tag, lat in (("a", res.latents_a[i]), ("b", res.latents_b[i])):
                save_latent(out / f"target{i:03d}_{tag}.safetensors", lat, space=res.space,
                            fingerprint=res.fingerprint, metadata={"source": str(t), "steps": steps, "init": "random",
                                                                   "seed": int(res.seeds[i, 0 if tag == "a" else 1])})
            summary["per_target"][i]["target"] = str(t)
        write_json(out / "injectivity.json", {"model": str(model), **summary})
    except OSError as e:
        click.echo(json.dumps({"model": str(model), **summary}))
        raise _write_failed(e, out, "the results are printed above") from None
    click.echo(json.dumps({k: summary[k] for k in ("space", "endpoint_lpips", "path_lpips_max", "path_lpips_excess",
                                                   "path_length", "lpips_a_b")}))
